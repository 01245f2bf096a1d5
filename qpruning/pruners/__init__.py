"""Token pruners: one module per method. ``get_pruner(name, **params)`` builds one from a config name."""

from __future__ import annotations

from qpruning.errors import ConfigError, check_params
from qpruning.pruners.adakv import AdaKV
from qpruning.pruners.base import NoPruner, Pruner, select_tokens
from qpruning.pruners.cake import CAKE
from qpruning.pruners.chunkkv import ChunkKV
from qpruning.pruners.h2o import H2O
from qpruning.pruners.headkv import HeadKV, HeadScores, load_head_scores
from qpruning.pruners.knorm import KNorm
from qpruning.pruners.pyramidkv import PyramidKV
from qpruning.pruners.snapkv import SnapKV
from qpruning.pruners.streamingllm import StreamingLLM
from qpruning.pruners.tova import TOVA

PRUNERS: dict[str, type[Pruner]] = {
    cls.name: cls for cls in (NoPruner, StreamingLLM, H2O, SnapKV, PyramidKV, AdaKV, HeadKV, TOVA, KNorm, ChunkKV, CAKE)
}


def get_pruner(name: str, **params) -> Pruner:
    """The pruner called ``name`` (``pruner=`` in configs), with its parameters."""
    if name not in PRUNERS:
        raise ConfigError(f"pruner={name!r} is not a pruner", f"allowed: {', '.join(PRUNERS)}")
    check_params(f"pruner={name}", PRUNERS[name], params, "pruner")
    return PRUNERS[name](**params)


__all__ = [
    "PRUNERS",
    "H2O",
    "TOVA",
    "CAKE",
    "AdaKV",
    "ChunkKV",
    "HeadKV",
    "HeadScores",
    "KNorm",
    "NoPruner",
    "Pruner",
    "PyramidKV",
    "SnapKV",
    "StreamingLLM",
    "get_pruner",
    "load_head_scores",
    "select_tokens",
]
