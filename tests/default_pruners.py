"""Every registered pruner as the parametrized tests build it (kvpress's ``tests/default_presses.py`` idea).

The lists come from the registries (:data:`qpruning.pruners.PRUNERS`, :data:`qpruning.cache.quantizers.QUANTIZERS`,
:data:`qpruning.compat.PAPER_PRUNERS`), so a new pruner (one file and one registry entry: docs/adding-a-pruner.md)
is tested by every test that parametrizes over them, with no test list to edit.
"""

from __future__ import annotations

from qpruning.compat import PAPER_PRUNERS
from qpruning.pruners import PRUNERS, Pruner, get_pruner

# What a pruner needs beyond its defaults to be built at all: HeadKV's head scores (SmolLM2's ship with qpruning).
BUILD_PARAMS: dict[str, dict] = {"headkv": {"model_name": "smollm2_135m"}}


def default_pruner(name: str) -> Pruner:
    """The pruner registered as ``name``, with its defaults (and :data:`BUILD_PARAMS`)."""
    return get_pruner(name, **BUILD_PARAMS.get(name, {}))


def model_free(cls: type[Pruner]) -> bool:
    """Whether ``cls`` runs on any model: it carries no per-model data (:meth:`Pruner.validate_geometry` is the base's
    no-op), so a tiny random model can run it."""
    return cls.validate_geometry is Pruner.validate_geometry


DEFAULT_PRUNERS: list[Pruner] = [default_pruner(name) for name in PRUNERS]
MODEL_FREE_PRUNERS: list[type[Pruner]] = [cls for cls in PRUNERS.values() if model_free(cls)]
NOT_IN_THE_PAPER: list[str] = [name for name in PRUNERS if name not in PAPER_PRUNERS]
