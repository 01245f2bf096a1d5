"""The transformers entry points qpruning relies on, looked up in the installed version.

qpruning plugs into transformers at a few documented places: a ``Cache`` made of its own layer objects
(``CacheLayerMixin``: ``lazy_initialization``, ``update``, ``get_seq_length``, ``get_mask_sizes``), the cache
argument of ``generate`` and of the model's forward, and the ``AttentionInterface`` / ``AttentionMaskInterface``
registries. transformers renames things between minor releases (5.24 renamed the model's ``past_key_values``
argument, and its outputs' field, to ``cache``; 5.25 made ``from_pretrained`` swap layers for Hub kernels by
default), so the names are read here, from the installed version's own signatures, once per model class, and
nowhere else:

    generate(**inputs, **cache_kwargs(model, cache))      # rather than past_key_values=cache or cache=cache
    output_cache(out)                                     # rather than out.past_key_values or out.cache
    from_pretrained(path, **from_pretrained_kwargs())     # the model's own layers, never Hub kernels

:func:`check_entry_points` says, naming the transformers version and the entry point, which of them the installed
version no longer has; the contract tests (``tests/test_transformers_contract.py``) exercise each one.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

CURRENT_NAME = "cache"  # transformers >= 5.24
LEGACY_NAME = "past_key_values"  # transformers < 5.24 (deprecated from 5.24, removed in 5.40)


class TransformersAPIError(RuntimeError):
    """The installed transformers lacks an entry point qpruning relies on."""


def transformers_version() -> str:
    import transformers

    return transformers.__version__


@functools.cache
def _cache_argument_of(function: Any) -> str:
    parameters = inspect.signature(function).parameters
    if CURRENT_NAME in parameters:
        return CURRENT_NAME
    if LEGACY_NAME in parameters:
        return LEGACY_NAME
    raise TransformersAPIError(
        f"transformers {transformers_version()}: {getattr(function, '__qualname__', function)} takes neither "
        f"`{CURRENT_NAME}` nor `{LEGACY_NAME}`; qpruning cannot hand it a compressed cache"
    )


def cache_argument(module: Any) -> str:
    """The name under which ``module``'s forward takes the KV cache.

    ``generate`` takes it under the same name (it hands its keyword arguments on to the model's forward).
    Decorators (deprecate_kwarg, can_return_tuple...) keep the wrapped signature through functools.wraps.
    """
    return _cache_argument_of(type(module).forward)


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model.generate(...)`` or ``model(...)``, under the installed version's name."""
    return {cache_argument(model): cache}


def forward_cache(kwargs: dict[str, Any], name: str) -> Any:
    """The cache handed to a forward call whose keyword arguments are ``kwargs`` (either spelling)."""
    cache = kwargs.get(name)
    if cache is None:
        other = LEGACY_NAME if name == CURRENT_NAME else CURRENT_NAME
        cache = kwargs.get(other)
    return cache


def set_forward_cache(kwargs: dict[str, Any], name: str, cache: Any) -> None:
    """Hand ``cache`` to a forward call under ``name``, dropping the other spelling so exactly one is set."""
    other = LEGACY_NAME if name == CURRENT_NAME else CURRENT_NAME
    kwargs.pop(other, None)
    kwargs[name] = cache


def output_cache(output: Any) -> Any:
    """The cache a model's forward returned (``output.cache`` from 5.24, ``output.past_key_values`` before)."""
    for name in (CURRENT_NAME, LEGACY_NAME):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


def from_pretrained_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``AutoModelForCausalLM.from_pretrained``: the model's own layers, no Hub kernels.

    From 5.25, ``from_pretrained`` kernelizes by default (``use_kernels=None`` means on): it raises without the
    ``kernels`` package at the version it pins, and with it swaps layers for kernels fetched from the Hub at load
    time (offline runs fail, the numbers change). Every version with the kernels integration (``set_use_kernels``)
    takes ``use_kernels=False``, which keeps the behaviour of the versions before 5.25.
    """
    from transformers import PreTrainedModel

    return {"use_kernels": False} if hasattr(PreTrainedModel, "set_use_kernels") else {}


def check_entry_points() -> None:
    """Raise :class:`TransformersAPIError` naming the version and the entry point if one is missing."""
    version = transformers_version()

    def need(condition: bool, what: str) -> None:
        if not condition:
            raise TransformersAPIError(f"transformers {version}: {what}; qpruning supports the versions in pyproject.toml")

    try:
        from transformers import AttentionInterface
        from transformers.cache_utils import Cache, CacheLayerMixin
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError as error:
        raise TransformersAPIError(f"transformers {version}: {error}") from None
    for method in ("lazy_initialization", "update", "get_seq_length", "get_mask_sizes", "get_max_length"):
        need(hasattr(CacheLayerMixin, method), f"CacheLayerMixin has no {method}()")
    need("layers" in inspect.signature(Cache.__init__).parameters, "Cache(...) takes no layers= argument")
    need(callable(getattr(AttentionInterface, "register", None)), "AttentionInterface.register is gone")
    need(callable(getattr(AttentionMaskInterface, "register", None)), "AttentionMaskInterface.register is gone")
    need("sdpa" in ALL_ATTENTION_FUNCTIONS, "ALL_ATTENTION_FUNCTIONS has no 'sdpa'")
    need("sdpa" in ALL_MASK_ATTENTION_FUNCTIONS, "ALL_MASK_ATTENTION_FUNCTIONS has no 'sdpa'")
