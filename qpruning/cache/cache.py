"""The compressed KV cache of a whole model: one :class:`CompressedLayer` per decoder layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from qpruning.cache.budget import LayerPlan
from qpruning.cache.layer import BYTE_KINDS, FULL_CACHE_BYTES_PER_NUMBER, CompressedLayer, SlidingLayer
from qpruning.cache.rope import KeyRotary

__all__ = ["FULL_CACHE_BYTES_PER_NUMBER", "PrefillResult", "QPrunedCache"]


@dataclass(frozen=True)
class PrefillResult:
    """What a cache held right after prefill, from its layers' own records (:attr:`CompressedLayer.prefill`).

    ``layer_tokens`` is each layer's kept-token count (``None``: every token); ``kept_tokens`` the mean tokens
    held per layer and KV row; ``bytes`` by kind (:data:`qpruning.cache.layer.BYTE_KINDS`) with ``total``.
    ``kv_bytes`` and ``kv_bytes_full`` count every layer (the full reference: what the model's own 16-bit cache
    holds, at most the window of a sliding-window layer); ``kv_bytes_global`` and ``kv_bytes_full_global`` the
    global layers alone, whose full cache a ``budget`` is a fraction of (equal to the totals for a model without
    sliding-window layers).
    """

    layer_tokens: tuple[int | None, ...]
    kept_tokens: float
    kv_bytes: int
    kv_bytes_full: int
    kv_ratio: float
    seen_tokens: int
    bytes: dict[str, int]
    kv_bytes_global: int = 0
    kv_bytes_full_global: int = 0

    def summary(self) -> dict:
        """The same fields as :meth:`QPrunedCache.summary` (what runs record)."""
        return {
            "kv_bytes": self.kv_bytes,
            "kv_bytes_full": self.kv_bytes_full,
            "kv_ratio": self.kv_ratio,
            "kv_bytes_global": self.kv_bytes_global,
            "kv_bytes_full_global": self.kv_bytes_full_global,
            "kept_tokens": self.kept_tokens,
            "seen_tokens": self.seen_tokens,
            "bytes": self.bytes,
        }


def _summed(byte_counts) -> dict[str, int]:
    out = dict.fromkeys(BYTE_KINDS, 0)
    for counts in byte_counts:
        for kind, n in counts.items():
            out[kind] += n
    out["total"] = sum(out[k] for k in BYTE_KINDS)
    return out


def _mean_tokens(per_row: list[torch.Tensor]) -> float:
    counts = [t.float().mean().item() for t in per_row]
    return sum(counts) / len(counts) if counts else 0.0


class QPrunedCache(Cache):
    """A transformers ``Cache`` whose layers are pruned then quantized at the end of prefill.

    Build it with :meth:`qpruning.KVCompressor.new_cache` and use it inside ``compressor.attach(model)``;
    it reports what it holds with :meth:`nbytes` (measured from the tensors) and :meth:`summary`.
    """

    # What _layers makes. transformers' Cache declares a list of any cache layer; a list is invariant, so mypy calls
    # the narrower one here an incompatible override (and its argument to Cache.__init__ below).
    layers: list[CompressedLayer | SlidingLayer]  # type: ignore[assignment]

    def __init__(self, num_layers: int, plans: Sequence[LayerPlan] = ()) -> None:
        plans = tuple(plans)
        if plans and len(plans) != num_layers:
            raise ValueError(f"QPrunedCache: {len(plans)} plans for {num_layers} layers")
        super().__init__(layers=_layers(num_layers, plans))  # type: ignore[arg-type]  # list invariance (above)
        # Bits and kept tokens of every layer (KVCompressor.plan), given when the cache is made; empty: the
        # attached compressor's plans.
        self.plans: tuple[LayerPlan, ...] = plans
        # [batch, seq] bool of real (non-padding) prompt tokens, recorded from the first forward's 2-D mask.
        self.key_valid: torch.Tensor | None = None
        # quant=kvquant: each layer's RoPE (qpruning.cache.rope.key_rotaries), given by the compressor
        self.rotaries: tuple[KeyRotary, ...] | None = None

    def use_rotaries(self, rotaries: Sequence[KeyRotary]) -> None:
        """Take the model's per-layer RoPE, which a quantizer of keys before RoPE (KVQuant) needs; a cache keeps
        the first it is given."""
        if len(rotaries) != len(self.layers):
            raise ValueError(f"QPrunedCache.use_rotaries: {len(rotaries)} rotaries for {len(self.layers)} layers")
        if self.rotaries is None:
            self.rotaries = tuple(rotaries)

    def position_offset(self) -> torch.Tensor | None:
        """Per batch item, how far a cache index exceeds its RoPE position: the left padding (transformers'
        ``generate`` numbers a padded row's positions from its first real token), ``None`` without padding."""
        if self.key_valid is None:
            return None
        return (~self.key_valid).sum(-1)

    def use_plans(self, plans: Sequence[LayerPlan]) -> None:
        """Take ``plans`` if the cache was made without any (``QPrunedCache(n)`` handed to an attached model);
        a cache keeps the plans it was made with. Its layers are made anew for the plans (a sliding-window layer is
        another kind of layer), which an unused cache allows."""
        if not self.plans:
            if any(layer.is_initialized for layer in self.layers):
                raise ValueError("QPrunedCache.use_plans: the cache already holds tokens")
            self.plans = tuple(plans)
            self.layers = _layers(len(self.layers), self.plans)

    def record_attention_mask(self, attention_mask: torch.Tensor | None) -> None:
        """Remember which prompt tokens are padding (from the first forward's 2-D attention mask)."""
        if self.key_valid is not None or attention_mask is None or attention_mask.dim() != 2:
            return
        valid = attention_mask.bool()
        self.key_valid = None if bool(valid.all()) else valid

    def kept_positions(self, layer_idx: int) -> torch.Tensor:
        """The prompt positions layer ``layer_idx`` kept, ``LongTensor [batch, rows, kept]`` (rows: KV heads, or
        query heads with ``compat=paper``), ascending; rows that kept fewer tokens end with ``-1``
        (:meth:`CompressedLayer.kept_positions`)."""
        return self.layers[layer_idx].kept_positions()

    def nbytes(self) -> dict[str, int]:
        """Bytes held by all layers, by kind (see :data:`qpruning.cache.layer.BYTE_KINDS`), plus ``total``."""
        return _summed(layer.nbytes() for layer in self.layers)

    def full_nbytes(self) -> int:
        """Bytes an uncompressed 16-bit cache would hold for the tokens seen so far (padding included)."""
        return sum(layer.full_nbytes() for layer in self.layers)

    def kept_tokens(self) -> float:
        """Mean tokens held per layer and KV row (batch item x KV head)."""
        return _mean_tokens([layer.tokens_per_row() for layer in self.layers if layer.shape is not None])

    def summary(self) -> dict:
        """What the cache holds: bytes by kind, the 16-bit reference, the ratio, kept tokens, tokens seen (and
        the global layers' bytes and reference, see :class:`PrefillResult`)."""
        held = self.nbytes()
        full = self.full_nbytes()
        global_layers = [layer for layer in self.layers if not layer.is_sliding]
        return {
            "kv_bytes": held["total"],
            "kv_bytes_full": full,
            "kv_ratio": held["total"] / full if full else float("nan"),
            "kv_bytes_global": sum(sum(layer.nbytes().values()) for layer in global_layers),
            "kv_bytes_full_global": sum(layer.full_nbytes() for layer in global_layers),
            "kept_tokens": self.kept_tokens(),
            "seen_tokens": self.layers[0].seen_tokens if self.layers else 0,
            "bytes": held,
        }

    def prefill_result(self) -> PrefillResult | None:
        """What the cache held right after prefill (before any generated token), or None before every layer's
        prefill has ended."""
        records = [layer.prefill for layer in self.layers if layer.prefill is not None]
        if not records or len(records) != len(self.layers):
            return None
        held = _summed(r.bytes for r in records)
        full = sum(r.full_bytes for r in records)
        global_layers = [r for r, layer in zip(records, self.layers) if not layer.is_sliding]
        return PrefillResult(
            layer_tokens=tuple(r.tokens for r in records),
            kept_tokens=_mean_tokens([r.tokens_per_row for r in records]),
            kv_bytes=held["total"],
            kv_bytes_full=full,
            kv_ratio=held["total"] / full if full else float("nan"),
            seen_tokens=records[0].seen_tokens,
            bytes=held,
            kv_bytes_global=sum(sum(r.bytes.values()) for r in global_layers),
            kv_bytes_full_global=sum(r.full_bytes for r in global_layers),
        )

    @property
    def prefill_summary(self) -> dict | None:
        """:meth:`summary` as it was right after prefill (:meth:`prefill_result`), or None before."""
        result = self.prefill_result()
        return None if result is None else result.summary()


def _layers(num_layers: int, plans: Sequence[LayerPlan]) -> list[CompressedLayer | SlidingLayer]:
    """One layer object per decoder layer: a :class:`SlidingLayer` for a sliding-window layer kept as the model
    keeps it, a :class:`CompressedLayer` (with its window, for a quantized sliding-window layer) otherwise."""
    if not plans:
        return [CompressedLayer(layer_idx=i) for i in range(num_layers)]
    return [
        SlidingLayer(i, plan.window) if plan.sliding == "keep" and plan.window is not None  # LayerPlan: both or neither
        else CompressedLayer(i, window=plan.window)
        for i, plan in enumerate(plans)
    ]
