"""The compressed KV cache: packed storage, quantizers, segments, layers and memory accounting."""

from qpruning.cache.cache import PrefillResult, QPrunedCache
from qpruning.cache.layer import CompressedLayer, LayerPrefill
from qpruning.cache.quantized import GroupAxis, OutlierFilter, QuantizedTensor, quantize
from qpruning.cache.quantizers import (
    HQQ,
    KIVI,
    QUANTIZERS,
    FlexGen,
    FlexGenOutlier,
    FlexGenRot,
    KIVIOutlier,
    KIVIRot,
    KVQuant,
    KVQuantizer,
    get_quantizer,
)

__all__ = [
    "HQQ",
    "KIVI",
    "QUANTIZERS",
    "CompressedLayer",
    "FlexGen",
    "FlexGenOutlier",
    "FlexGenRot",
    "GroupAxis",
    "KIVIOutlier",
    "KIVIRot",
    "KVQuant",
    "KVQuantizer",
    "LayerPrefill",
    "OutlierFilter",
    "PrefillResult",
    "QPrunedCache",
    "QuantizedTensor",
    "get_quantizer",
    "quantize",
]
