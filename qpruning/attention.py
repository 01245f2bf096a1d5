"""The attention function qpruning registers with transformers, and what it does.

transformers looks attention functions up by name (``config._attn_implementation``) in its
``AttentionInterface`` registry, the documented way to plug in another implementation. qpruning registers one
wrapper per base implementation (``qpruning_sdpa``, ``qpruning_eager``, ``qpruning_flash_attention_2``) the first
time a compressor is attached to a model with that base; nothing is registered or changed at import time, and
the existing implementations are untouched. The wrapper, for each attention call:

- outside a compressed forward pass, or on a layer that was left uncompressed: calls the base implementation
  with the model's own mask, so an uncompressed layer computes exactly what the unmodified model computes;
- on the first forward pass (prefill): calls the base implementation, then hands the layer's full-precision
  queries and keys to the compressor, which prunes and quantizes the layer's cache;
- on a compressed layer: attends over the layer's segments (:meth:`CompressedLayer.attend`) with a mask built
  from the layer's own row lengths, then lets the layer quantize its residual window.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from qpruning.cache.context import active_cache

PREFIX = "qpruning_"
_registered: set[str] = set()


def wrapped_name(base: str) -> str:
    return base if base.startswith(PREFIX) else PREFIX + base


def base_name(name: str) -> str:
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


def _base_function(base: str, module) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":
        # Every modeling file defines its own eager attention; it is the model's fallback, not a registry entry.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def _make_attention(base: str) -> Callable:
    def qpruning_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        cache = active_cache()
        base_fn = _base_function(base, module)
        if cache is None:
            return base_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        layer = cache.layers[module.layer_idx]
        if layer.compressed:
            out = layer.attend(query, scaling)
            layer.flush()
            return out, None
        out = base_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if layer.compression_pending:
            cache.compressor.compress_layer(cache, module.layer_idx, query, key, value, scaling)
        return out

    qpruning_attention.__name__ = f"qpruning_{base}_attention"
    return qpruning_attention


def register(base: str) -> str:
    """Register the qpruning wrapper of ``base`` (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    base = base_name(base)
    name = wrapped_name(base)
    if name in _registered:
        return name
    if base not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ValueError(
            f"qpruning cannot wrap the attention implementation {base!r}; supported: sdpa, eager, flash_attention_2"
        )
    AttentionInterface.register(name, _make_attention(base))
    # Same masks as the base: uncompressed layers need exactly the masks the unmodified model would build.
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    _registered.add(name)
    return name
