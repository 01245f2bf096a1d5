"""qpruning: quantized pruning of the KV cache of transformers causal LMs.

Reproduces and extends "More Tokens, Lower Precision: Towards the Optimal Token-Precision Trade-off in KV Cache
Compression" (Zhang et al., EMNLP Findings 2025): prune the KV cache to a token budget, quantize what is kept,
and compare token-precision trade-offs at equal memory.

The public names below are imported lazily (PEP 562), so that ``import qpruning.report`` or the CLI's ``--help``
do not pay for torch and transformers.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "HQQ": "qpruning.cache",
    "KIVI": "qpruning.cache",
    "FlexGen": "qpruning.cache",
    "FlexGenOutlier": "qpruning.cache",
    "GroupAxis": "qpruning.cache",
    "KIVIOutlier": "qpruning.cache",
    "KIVIRot": "qpruning.cache",
    "FlexGenRot": "qpruning.cache",
    "KVQuant": "qpruning.cache",
    "KVQuantizer": "qpruning.cache",
    "OutlierFilter": "qpruning.cache",
    "QPrunedCache": "qpruning.cache",
    "get_quantizer": "qpruning.cache",
    "LayerOverride": "qpruning.cache.budget",
    "LayerPlan": "qpruning.cache.budget",
    "tokens_for_budget": "qpruning.cache.budget",
    "KVCompressor": "qpruning.compressor",
    "Attached": "qpruning.compressor",
    "PrefillResult": "qpruning.cache.cache",
    "reference_attention": "qpruning.backends",
    "fused_attention": "qpruning.backends.triton",
    "AdaKV": "qpruning.pruners",
    "CAKE": "qpruning.pruners",
    "ChunkKV": "qpruning.pruners",
    "H2O": "qpruning.pruners",
    "HeadKV": "qpruning.pruners",
    "KNorm": "qpruning.pruners",
    "NoPruner": "qpruning.pruners",
    "Pruner": "qpruning.pruners",
    "PyramidKV": "qpruning.pruners",
    "SnapKV": "qpruning.pruners",
    "StreamingLLM": "qpruning.pruners",
    "TOVA": "qpruning.pruners",
    "get_pruner": "qpruning.pruners",
    "cache_kwargs": "qpruning.transformers_api",
    "output_cache": "qpruning.transformers_api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qpruning' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
