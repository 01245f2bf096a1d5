"""The attention function qpruning registers with transformers, and what it does.

transformers looks attention functions up by name (``config._attn_implementation``) in its
``AttentionInterface`` registry, the documented way to plug in another implementation. qpruning registers one
wrapper per base implementation (``qpruning_sdpa``, ``qpruning_eager``, ``qpruning_flash_attention_2``) the first
time a compressor is attached to a model with that base; nothing is registered or changed at import time, and
the existing implementations are untouched. The wrapper, for each attention call:

- outside a compressed forward pass, or on a layer that was left uncompressed: calls the base implementation
  with the model's own mask, so an uncompressed layer computes exactly what the unmodified model computes;
- on the first forward pass (prefill): calls the base implementation, then asks the compressor to prune and
  quantize the layer from its full-precision queries and keys (:meth:`ForwardContext.compress_layer`); the
  compressor returns what the layer now holds;
- on a compressed layer: attends over the layer's segments (:meth:`CompressedLayer.attend`) with a mask built
  from the layer's own row lengths, applying what the model's attention applies (the call's ``scaling``,
  ``softcap`` and ``s_aux`` sinks, and a sliding-window layer's window: :class:`~qpruning.cache.terms.AttentionTerms`),
  then lets the layer quantize its residual window.

A sliding-window layer kept as the model keeps it (``sliding=keep``) is never compressed: the base implementation
runs on it with the model's own sliding mask, as in the unmodified model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from qpruning.cache.budget import LayerPlan
from qpruning.cache.cache import QPrunedCache
from qpruning.cache.context import active_forward
from qpruning.cache.layer import LayerPrefill
from qpruning.cache.terms import AttentionTerms
from qpruning.pruners.base import Pruner

PREFIX = "qpruning_"
_registered: set[str] = set()


class LayerCompressor(Protocol):
    """What the forward needs of a compressor (:class:`qpruning.compressor.KVCompressor`)."""

    @property
    def pruner(self) -> Pruner: ...

    @property
    def needs_every_layer(self) -> bool: ...

    def layer_tokens(
        self, plans: Sequence[LayerPlan], seq_len: int, statistics: Sequence[float | None] | None = None
    ) -> Sequence[int | None]: ...

    def compress_layers(self, cache: QPrunedCache, captures: Mapping[int, LayerCapture]) -> dict[int, LayerPrefill]: ...

    def compress_layer(
        self, cache: QPrunedCache, layer_idx: int, query, key, value, scaling: float,
        layer_tokens: Sequence[int | None] | None = None,
    ) -> LayerPrefill | None: ...


@dataclass(frozen=True)
class LayerCapture:
    """What :meth:`KVCompressor.compress_layer` is given for one layer at the end of prefill, with the query cut to
    its last ``query_tail.shape[2]`` positions (``queries``: what the pruners read, :attr:`Pruner.queries_read`).
    A shared prefill (:mod:`qpruning.prefill`) records one per layer; :class:`ForwardContext` keeps them until the
    last layer for a pruner that needs every layer (:attr:`Pruner.needs_every_layer`).

    Args:
        query_tail: the last queries ``[batch, q_heads, kept, head_dim]`` (all of them when nothing was cut).
        key: the layer's keys ``[batch, kv_heads, seq, head_dim]`` (post-RoPE).
        value: the layer's values.
        scaling: the attention's scaling.
    """

    query_tail: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    scaling: float

    @classmethod
    def keep(cls, query, key, value, scaling: float, queries: int | None) -> LayerCapture:
        seq = query.shape[2]
        if queries is not None and queries < seq:
            # a copy: the full query (the prefill's) is then freed
            query = query[:, :, seq - queries:].clone() if queries else query[:, :, :0].clone()
        return cls(query, key, value, float(scaling))

    def query(self) -> torch.Tensor:
        """The query at full length ``[batch, q_heads, seq, head_dim]``: zeros before the kept tail."""
        seq, tail = self.key.shape[2], self.query_tail
        if tail.shape[2] == seq:
            return tail
        full = tail.new_zeros(*tail.shape[:2], seq, tail.shape[3])
        full[:, :, seq - tail.shape[2]:] = tail
        return full


@dataclass
class ForwardContext:
    """What one compressed forward pass needs, published by ``KVCompressor.attach``'s pre-hook
    (:mod:`qpruning.cache.context`): the compressor, the forward's cache, and per-prompt state (each layer's
    kept-token count, computed once per prompt length)."""

    compressor: LayerCompressor
    cache: QPrunedCache
    _layer_tokens: dict[int, Sequence[int | None]] = field(default_factory=dict, repr=False)
    _waiting: dict[int, LayerCapture] = field(default_factory=dict, repr=False)

    def layer_tokens(self, seq_len: int) -> Sequence[int | None]:
        """Kept tokens of every layer for a prompt of ``seq_len`` tokens (computed once per length)."""
        if seq_len not in self._layer_tokens:
            self._layer_tokens[seq_len] = self.compressor.layer_tokens(self.cache.plans, seq_len)
        return self._layer_tokens[seq_len]

    def compress_layer(self, layer_idx: int, query, key, value, scaling: float) -> LayerPrefill | None:
        """Prune and quantize layer ``layer_idx`` of the forward's cache; returns what it holds afterwards.

        With a compressor that :attr:`~LayerCompressor.needs_every_layer`, a global layer's tensors are kept (the
        last queries its pruner reads, and references to the keys and values the layer holds anyway) and ``None``
        is returned, until no global layer's compression is pending: then every kept layer is compressed at once
        (:meth:`LayerCompressor.compress_layers`), in layer order."""
        if not self.compressor.needs_every_layer or self.cache.plans[layer_idx].window is not None:
            return self.compressor.compress_layer(
                self.cache, layer_idx, query, key, value, scaling, layer_tokens=self.layer_tokens(key.shape[2])
            )
        self._waiting[layer_idx] = LayerCapture.keep(query, key, value, scaling, self.compressor.pruner.queries_read)
        plans = self.cache.plans
        # the global layers still to come (a sliding-window layer is compressed in line: it may come after the
        # last global layer, as in Gemma 3, and must not hold the global layers back)
        if any(layer.compression_pending and index not in self._waiting and plans[index].window is None
               for index, layer in enumerate(self.cache.layers)):
            return None
        waiting, self._waiting = self._waiting, {}
        return self.compressor.compress_layers(self.cache, waiting)[layer_idx]


def active_context() -> ForwardContext | None:
    """The :class:`ForwardContext` of the compressed forward pass in progress, or None outside one."""
    context: Any = active_forward()
    return context


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
        context = active_context()
        base_fn = _base_function(base, module)
        if context is None:
            return base_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        layer = context.cache.layers[module.layer_idx]
        if layer.compressed:
            out = layer.attend(query, scaling, AttentionTerms.from_call(kwargs))
            layer.flush()
            return out, None
        out = base_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if layer.compression_pending:
            context.compress_layer(module.layer_idx, query, key, value, scaling)
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
