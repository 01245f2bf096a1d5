"""Checks of a composed Hydra configuration that no single dataclass owns, and instantiation that reports the
user's mistake rather than Hydra's wrapper around it.

Used by :func:`qpruning.runner.runner_from_config` and the optimize driver, before any weights load. The
dataclasses (quantizers, pruners, :class:`~qpruning.compressor.KVCompressor`, benchmarks, :class:`ModelSpec`)
validate their own fields in ``__post_init__``; this module covers the rest (the logger, ``tokens`` typed over the
default ``budget``) and turns a ``TypeError`` for an unknown parameter into a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import inspect
from typing import Any

from qpruning.errors import ConfigError, UserError, check_choice

LOGGER_MODES = ("online", "offline", "disabled")
DEFAULT_BUDGET_KEY = "default_budget"


def build(cfg: Any, key: str) -> Any:
    """``hydra.utils.instantiate(cfg[key])``; a mistake in its fields raises the :class:`UserError` itself."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_object, instantiate
    from omegaconf import OmegaConf

    node = cfg[key]
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and OmegaConf.is_dict(node) and "_target_" in node:
            target = get_object(node._target_)
            accepted = [p for p in inspect.signature(target).parameters if p not in ("self", "args", "kwargs")]
            unknown = [k for k in node if k != "_target_" and k not in accepted]
            if unknown:
                raise ConfigError(
                    f"{key}.{unknown[0]} is not a parameter of {key}={node.get('name', target.__name__)}",
                    f"allowed: {', '.join(accepted)}",
                ) from None
            raise ConfigError(f"{key}: {cause}", f"allowed: the parameters {', '.join(accepted)}") from None
        raise


def check_logger(cfg: Any) -> None:
    """``logger.mode``: online, offline, disabled or null (``WANDB_MODE`` decides)."""
    node = cfg.get("logger")
    if node is not None and "mode" in node:
        check_choice("logger.mode", node.mode, LOGGER_MODES, optional=True)


def tokens_and_budget(cfg: Any) -> tuple[Any, Any]:
    """The ``tokens`` and ``budget`` a run uses: whichever of the two the user typed wins over the default.

    ``conf/config.yaml`` sets ``budget: ${default_budget}``. While ``budget`` is still that interpolation, the
    user did not type it (nor did an experiment file), so a typed ``tokens=512`` replaces it. A typed
    ``budget=...`` (or one from an experiment) is a plain value: with ``tokens`` as well it is an error, raised by
    :class:`~qpruning.compressor.KVCompressor`.
    """
    tokens, budget = cfg.get("tokens"), cfg.get("budget")
    if tokens is not None and budget_is_default(cfg):
        budget = None
    return tokens, budget


def budget_is_default(cfg: Any) -> bool:
    """Whether ``budget`` is still ``${default_budget}`` (not typed by the user or an experiment)."""
    from omegaconf import OmegaConf

    if "budget" not in cfg or not OmegaConf.is_interpolation(cfg, "budget"):
        return False
    return str(cfg._get_node("budget")._value()).replace(" ", "") == "${" + DEFAULT_BUDGET_KEY + "}"
