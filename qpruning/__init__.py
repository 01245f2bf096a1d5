"""qpruning: quantized pruning of the KV cache of transformers causal LMs.

Reproduces and extends "More Tokens, Lower Precision: Towards the Optimal Token-Precision Trade-off in KV Cache
Compression" (Zhang et al., EMNLP Findings 2025): prune the KV cache to a token budget, quantize what is kept,
and compare token-precision trade-offs at equal memory.
"""

from qpruning.cache import (
    HQQ,
    KIVI,
    FlexGen,
    FlexGenOutlier,
    GroupAxis,
    KIVIOutlier,
    KVQuantizer,
    OutlierFilter,
    QPrunedCache,
    get_quantizer,
)
from qpruning.cache.budget import LayerOverride, LayerPlan, tokens_for_budget
from qpruning.compressor import KVCompressor
from qpruning.pruners import H2O, NoPruner, Pruner, PyramidKV, SnapKV, StreamingLLM, get_pruner

__version__ = "0.1.0"

__all__ = [
    "H2O",
    "HQQ",
    "KIVI",
    "FlexGen",
    "FlexGenOutlier",
    "GroupAxis",
    "KIVIOutlier",
    "KVCompressor",
    "KVQuantizer",
    "LayerOverride",
    "LayerPlan",
    "NoPruner",
    "OutlierFilter",
    "Pruner",
    "PyramidKV",
    "QPrunedCache",
    "SnapKV",
    "StreamingLLM",
    "get_pruner",
    "get_quantizer",
    "tokens_for_budget",
]
