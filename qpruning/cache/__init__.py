"""The compressed KV cache: packed storage, quantizers, segments, layers and memory accounting."""

from qpruning.cache.cache import QPrunedCache
from qpruning.cache.layer import CompressedLayer
from qpruning.cache.quantized import GroupAxis, OutlierFilter, QuantizedTensor, quantize
from qpruning.cache.quantizers import (
    HQQ,
    KIVI,
    QUANTIZERS,
    FlexGen,
    FlexGenOutlier,
    KIVIOutlier,
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
    "GroupAxis",
    "KIVIOutlier",
    "KVQuantizer",
    "OutlierFilter",
    "QPrunedCache",
    "QuantizedTensor",
    "get_quantizer",
    "quantize",
]
