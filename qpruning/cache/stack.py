"""Several one-prompt compressed caches as the rows of one batch, to decode them together.

Caches compressed by different pruners or budgets from the same prompt (:mod:`qpruning.prefill`) differ only in
which tokens each row keeps; with the same quantizer, their layers hold segments of the same kinds, and a batch
cache can hold them side by side: row ``r`` of a segment is one cache's row (ragged rows are supported, see
:mod:`qpruning.cache.segments`). Each cache's own layer is left untouched.

:func:`stack_caches` returns None when the caches cannot be stacked: a layer left uncompressed (16-bit with
every token kept, or a sliding window kept as the model keeps it), different quantizers or storage, different segment kinds, the HQQ cache of ``compat=paper``, or
outliers (their share is taken over the whole quantized tensor, so a batch would choose other outliers than each
cache alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qpruning.cache.cache import QPrunedCache
from qpruning.cache.layer import CompressedLayer, SlidingLayer
from qpruning.cache.quantized import QuantizedTensor
from qpruning.cache.segments import Segment


def _cat_tokens(parts: list) -> QuantizedTensor | torch.Tensor:
    """``[n, d]`` tensors (quantized or not, the same kind) laid one after the other."""
    if not isinstance(parts[0], QuantizedTensor):
        return torch.cat(parts)
    first = parts[0]
    return QuantizedTensor(
        torch.cat([p.packed for p in parts]), torch.cat([p.scale for p in parts]), torch.cat([p.zero for p in parts]),
        first.bits, first.group_size, first.axis, first.head_dim,
    )


def _stackable(parts: list) -> bool:
    """Plain ``QuantizedTensor`` s without outliers of one layout, or plain tensors of one dtype and width: laid
    row by row, so one after the other is row after row (other kinds, such as the HQQ cache's, are not)."""
    first = parts[0]
    if type(first) is QuantizedTensor:
        layout = (first.bits, first.group_size, first.axis, first.head_dim, first.packed.shape[1:], first.scale.shape[1:])
        return all(
            type(p) is QuantizedTensor and p.outlier_index is None
            and (p.bits, p.group_size, p.axis, p.head_dim, p.packed.shape[1:], p.scale.shape[1:]) == layout
            for p in parts
        )
    return type(first) is torch.Tensor and all(
        type(p) is torch.Tensor and p.dtype == first.dtype and p.shape[1:] == first.shape[1:] for p in parts
    )


def _stack_segments(segments: list[Segment]) -> Segment:
    return Segment.build(_cat_tokens([s.keys for s in segments]), _cat_tokens([s.values for s in segments]),
                         torch.cat([s.lengths for s in segments]))


def _held(tensor: torch.Tensor | None) -> torch.Tensor:
    """A tensor that a compressed layer holds (set by its compression)."""
    assert tensor is not None
    return tensor


def _compressed(layers: Sequence[CompressedLayer | SlidingLayer]) -> list[CompressedLayer]:
    """The layers that are compressed :class:`CompressedLayer` s, in order."""
    return [layer for layer in layers if isinstance(layer, CompressedLayer) and layer.compressed]


def _layers_match(all_layers: Sequence[CompressedLayer | SlidingLayer]) -> bool:
    """The layers hold segments of one layout, layer for layer (checked without concatenating anything)."""
    layers = _compressed(all_layers)
    if len(layers) != len(all_layers):
        return False  # a layer left as the model made it (16-bit in full, a kept sliding window) does not stack
    first = layers[0]
    same = (first.quantizer, first.storage_dtype, first.backend, first.head_repeat, first.seen_tokens, first.layer_idx,
            first.window)
    return all(
        layer.compressed and layer.decoded is None and _held(layer.residual_keys).shape[2] == 0
        and (layer.quantizer, layer.storage_dtype, layer.backend, layer.head_repeat, layer.seen_tokens,
             layer.layer_idx, layer.window) == same
        and len(layer.prefix) == len(first.prefix) and layer.shape is not None and layer.shape[0] == 1
        for layer in layers
    ) and all(
        _stackable([layer.prefix[i].keys for layer in layers]) and _stackable([layer.prefix[i].values for layer in layers])
        for i in range(len(first.prefix))
    )


def _stack_layer(all_layers: Sequence[CompressedLayer | SlidingLayer]) -> CompressedLayer:
    layers = _compressed(all_layers)
    assert len(layers) == len(all_layers)  # stackable() checked it
    first = layers[0]
    prefix = [_stack_segments([layer.prefix[i] for layer in layers]) for i in range(len(first.prefix))]
    stacked = CompressedLayer(first.layer_idx, window=first.window)
    # the same quantizer and layer: the same rotation (seeded by the layer), or none
    stacked.rotation = first.rotation
    stacked.dtype, stacked.device, stacked.is_initialized = first.dtype, first.device, True
    assert first.shape is not None  # set by the layer's first update
    _, heads, head_dim = first.shape
    stacked.shape = (len(layers), heads, head_dim)
    stacked.seen_tokens = first.seen_tokens
    stacked.compressed, stacked.compression_pending = True, False
    stacked.quantizer, stacked.storage_dtype, stacked.backend = first.quantizer, first.storage_dtype, first.backend
    stacked.head_repeat = first.head_repeat
    stacked.prefix = prefix
    stacked.kept_per_row = torch.cat([_held(layer.kept_per_row) for layer in layers])
    stacked.residual_keys = torch.cat([_held(layer.residual_keys) for layer in layers])
    stacked.residual_values = torch.cat([_held(layer.residual_values) for layer in layers])
    return stacked


def stackable(caches: list[QPrunedCache]) -> bool:
    """Whether :func:`stack_caches` can stack ``caches`` (the same checks, nothing concatenated)."""
    if not caches or any(len(c.layers) != len(caches[0].layers) or c.key_valid is not None for c in caches):
        return False
    if any(c.plans and [p.bits for p in c.plans] != [p.bits for p in caches[0].plans] for c in caches):
        return False
    return all(_layers_match([c.layers[i] for c in caches]) for i in range(len(caches[0].layers)))


def stack_caches(caches: list[QPrunedCache]) -> QPrunedCache | None:
    """One batch cache whose row ``i`` is ``caches[i]`` (each a one-prompt cache right after its prefill), or None
    when they cannot be stacked (see the module docstring and :func:`stackable`)."""
    if not stackable(caches):
        return None
    stacked = QPrunedCache(len(caches[0].layers), plans=caches[0].plans)
    stacked.layers = [_stack_layer([c.layers[i] for c in caches]) for i in range(len(caches[0].layers))]
    return stacked
