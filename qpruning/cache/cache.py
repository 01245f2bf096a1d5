"""The compressed KV cache of a whole model: one :class:`CompressedLayer` per decoder layer."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from qpruning.cache.layer import BYTE_KINDS, CompressedLayer

FULL_CACHE_BYTES_PER_NUMBER = 2  # the reference cache is 16-bit


class QPrunedCache(Cache):
    """A transformers ``Cache`` whose layers are pruned then quantized at the end of prefill.

    Build it with :meth:`qpruning.KVCompressor.new_cache` and use it inside ``compressor.attach(model)``;
    it reports what it holds with :meth:`nbytes` (measured from the tensors) and :meth:`summary`.
    """

    def __init__(self, num_layers: int, compressor=None) -> None:
        super().__init__(layers=[CompressedLayer() for _ in range(num_layers)])
        self.compressor = compressor
        # Bits and token budget of every layer (KVCompressor.plan), set when the cache is made.
        self.plans: list = []
        # [batch, seq] bool of real (non-padding) prompt tokens, recorded from the first forward's 2-D mask.
        self.key_valid: torch.Tensor | None = None
        # What the cache held right after prefill (set by the compressor after the last layer).
        self.prefill_summary: dict | None = None

    def record_attention_mask(self, attention_mask: torch.Tensor | None) -> None:
        """Remember which prompt tokens are padding (from the first forward's 2-D attention mask)."""
        if self.key_valid is not None or attention_mask is None or attention_mask.dim() != 2:
            return
        valid = attention_mask.bool()
        self.key_valid = None if bool(valid.all()) else valid

    def nbytes(self) -> dict[str, int]:
        """Bytes held by all layers, by kind (see :data:`qpruning.cache.layer.BYTE_KINDS`), plus ``total``."""
        out = dict.fromkeys(BYTE_KINDS, 0)
        for layer in self.layers:
            for kind, n in layer.nbytes().items():
                out[kind] += n
        out["total"] = sum(out[k] for k in BYTE_KINDS)
        return out

    def full_nbytes(self) -> int:
        """Bytes an uncompressed 16-bit cache would hold for the tokens seen so far (padding included)."""
        total = 0
        for layer in self.layers:
            if layer.shape is None:
                continue
            batch, heads, head_dim = layer.shape
            total += 2 * batch * heads * layer.seen_tokens * head_dim * FULL_CACHE_BYTES_PER_NUMBER
        return total

    def kept_tokens(self) -> float:
        """Mean tokens held per layer and KV row (batch item x KV head)."""
        counts = [layer.tokens_per_row().float().mean().item() for layer in self.layers if layer.shape is not None]
        return sum(counts) / len(counts) if counts else 0.0

    def summary(self) -> dict:
        """What the cache holds: bytes by kind, the 16-bit reference, the ratio, kept tokens, tokens seen."""
        held = self.nbytes()
        full = self.full_nbytes()
        return {
            "kv_bytes": held["total"],
            "kv_bytes_full": full,
            "kv_ratio": held["total"] / full if full else float("nan"),
            "kept_tokens": self.kept_tokens(),
            "seen_tokens": self.layers[0].seen_tokens if self.layers else 0,
            "bytes": held,
        }
