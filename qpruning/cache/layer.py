"""One layer of the compressed KV cache.

Life of a layer:

1. *plain*: during prefill it behaves exactly like transformers' ``DynamicLayer`` (full-precision
   ``[batch, kv_heads, seq, head_dim]`` tensors, same concatenation), so that a layer that ends up uncompressed
   reproduces the uncompressed model bit for bit;
2. at the end of the first multi-token forward, :meth:`CompressedLayer.compress` keeps the tokens that the
   pruner chose and stores them as segments (:mod:`qpruning.cache.segments`): the kept tokens that fill whole
   quantization groups are quantized and packed, the few that do not stay in 16 bits;
3. *compressed*: tokens added later (generated tokens, or a question appended after the context) wait in a
   16-bit residual window; after each attention call, :meth:`flush` quantizes the residual a block of
   ``residual_length`` tokens at a time and appends it to the decoded segment (KIVI's streaming scheme).

The layer remembers how many tokens it has seen (``seen_tokens``), which is what ``get_seq_length`` reports:
transformers derives positions and mask sizes from it, and decoding must continue at the original RoPE
positions whatever the layer holds.

A layer whose quantizer has ``rotate=True`` (``quant=kivi_rot``/``flexgen_rot``) holds its
:class:`~qpruning.cache.rotation.Rotation` from :meth:`CompressedLayer.compress` on: every token it stores from then
(quantized prefix, 16-bit tail, residual window, flushed blocks) is in the rotated basis, and :meth:`attend` rotates
the query and rotates the output back, whichever backend runs. Pruning has already scored the original keys.

A sliding-window layer (``window``: Gemma 2/3's local layers, gpt-oss's, Mistral v0.1's) holds at most its window,
as the model's own cache layer does. With ``sliding=quantize`` it is a :class:`CompressedLayer` with a ``window``:
at the end of prefill it keeps the last ``window - 1`` tokens, quantized in blocks of ``residual_length`` tokens;
its attention sees the last ``window`` tokens of every row (:class:`~qpruning.cache.terms.AttentionTerms`), and
after each flush the blocks that no later query can see are freed, so it holds at most the window plus one block
and the residual. With ``sliding=keep`` it is a :class:`SlidingLayer`: transformers' own
``DynamicSlidingWindowLayer`` (the model's dtype, the model's mask), with qpruning's accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import CacheLayerMixin, DynamicSlidingWindowLayer

from qpruning.cache.context import active_forward
from qpruning.cache.quantizers import KVQuantizer
from qpruning.cache.rope import KeyRope, KeyRotary
from qpruning.cache.rotation import Rotation
from qpruning.cache.segments import Segment
from qpruning.cache.terms import PLAIN, AttentionTerms

BYTE_KINDS = ("packed", "scales", "zeros", "outliers", "full", "residual", "index", "rotation")
FULL_CACHE_BYTES_PER_NUMBER = 2  # the reference cache is 16-bit

# Attention over a layer's segments (see :mod:`qpruning.backends`): ``backend(segments, query, scaling)``, or
# ``backend(segments, query, scaling, terms)`` when the call has :class:`AttentionTerms` beyond plain attention.
AttentionBackend = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class LayerPrefill:
    """What a layer held right after prefill, recorded by the layer itself when its prefill ends.

    ``tokens`` is the kept-token count it was given (``None``: every token); ``tokens_per_row`` is
    :meth:`CompressedLayer.tokens_per_row` at that moment.
    """

    tokens: int | None
    bytes: dict[str, int]
    full_bytes: int
    tokens_per_row: torch.Tensor
    seen_tokens: int


class CompressedLayer(CacheLayerMixin):
    """A cache layer that is plain during prefill, then holds pruned and quantized segments."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, layer_idx: int = 0, window: int | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # seeds the layer's rotation (quant rotate=true)
        # a sliding-window layer's window (sliding=quantize), counting the current token; None: a global layer
        self.window = window
        self.is_sliding = window is not None
        self.rotation: Rotation | None = None
        self.seen_tokens = 0
        self.compressed = False
        self.compression_pending = True
        self.quantizer: KVQuantizer | None = None
        self.storage_dtype: torch.dtype | None = None
        self.prefix: list[Segment] = []
        self.decoded: Segment | None = None
        self.residual_keys: torch.Tensor | None = None
        self.residual_values: torch.Tensor | None = None
        self.shape: tuple[int, int, int] | None = None  # batch, kv_heads, head_dim
        self.kept_per_row: torch.Tensor | None = None
        self.backend: AttentionBackend | None = None
        self.prefill: LayerPrefill | None = None
        # compat=paper: each KV head repeated to the query heads that read it (the cache holds q_heads rows)
        self.head_repeat = 1
        self._kept_positions: torch.Tensor | None = None
        # quant=kvquant: the layer's RoPE, and per batch item what its cache index exceeds its RoPE position by
        # (the left padding), from compress on
        self.rotary: KeyRotary | None = None
        self.position_offset: torch.Tensor | None = None

    # -- transformers' layer interface -------------------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = torch.tensor([], dtype=self.dtype, device=self.device)
        self.values = torch.tensor([], dtype=self.dtype, device=self.device)
        batch, heads, _, head_dim = key_states.shape
        self.shape = (batch, heads, head_dim)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen_tokens += key_states.shape[-2]
        if not self.compressed:
            assert self.keys is not None and self.values is not None  # made by lazy_initialization
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            return self.keys, self.values
        if active_forward() is None:
            raise RuntimeError(
                "This layer holds a compressed KV cache, which only qpruning's attention can read: run the model "
                "inside `with compressor.attach(model):`"
            )
        k = self._stored(key_states).to(self.storage_dtype)
        v = self._stored(value_states).to(self.storage_dtype)
        if self.head_repeat > 1:
            k = k.repeat_interleave(self.head_repeat, dim=1)
            v = v.repeat_interleave(self.head_repeat, dim=1)
        assert self.residual_keys is not None and self.residual_values is not None  # made by compress
        self.residual_keys = torch.cat([self.residual_keys, k], dim=-2)
        self.residual_values = torch.cat([self.residual_values, v], dim=-2)
        # The returned tensors are not read: qpruning's attention reads the segments and the residual.
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # Sized for the uncompressed geometry: plain layers use the model's mask as-is, compressed layers
        # build their own from their row lengths.
        return self.seen_tokens + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__(self.layer_idx, self.window)  # type: ignore[misc]  # the layer's own first state, on purpose

    def _unsupported(self, what: str):
        raise NotImplementedError(f"{what} is not supported on a compressed KV cache (use greedy or sampling)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.compressed:
            self._unsupported("Beam search")
        super().reorder_cache(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        self._unsupported("Cropping")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.compressed:
            self._unsupported("Expanding the batch")
        if self.keys is not None and self.keys.numel():
            assert self.values is not None  # made with the keys
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.compressed:
            self._unsupported("Selecting batch rows")
        if self.keys is not None and self.keys.numel():
            assert self.values is not None  # made with the keys
            self.keys = self.keys[indices, ...]
            self.values = self.values[indices, ...]

    # -- compression -------------------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        assert self.shape is not None  # set by lazy_initialization
        batch, heads, _ = self.shape
        return batch * heads

    def repeat_heads(self, repeat: int) -> None:
        """Repeat every KV head ``repeat`` times (consecutive query heads share a KV head, as transformers'
        ``repeat_kv``), before compression: from now on the layer holds one row per query head, and the tokens
        added later are repeated too (``compat=paper``: what the paper's code caches). The 16-bit reference of
        :meth:`full_nbytes` stays the model's KV heads."""
        if self.compressed or self.head_repeat != 1:
            raise RuntimeError("repeat_heads: the layer is already compressed or repeated")
        assert self.keys is not None and self.values is not None and self.shape is not None  # a plain layer's
        self.keys = self.keys.repeat_interleave(repeat, dim=1)
        self.values = self.values.repeat_interleave(repeat, dim=1)
        batch, heads, head_dim = self.shape
        self.shape = (batch, heads * repeat, head_dim)
        self.head_repeat = repeat

    def kept_positions(self) -> torch.Tensor:
        """Prompt positions the layer kept at the end of prefill, ``LongTensor [batch, rows, kept]`` (``rows``:
        KV heads, or query heads in ``compat=paper``), ascending, in the positions of the (left-padded) prompt.
        Rows that kept fewer tokens than the longest one (head-wise budgets, padding) end with ``-1``. Before
        compression: every position seen so far."""
        if self._kept_positions is not None:
            return self._kept_positions
        if self.shape is None:
            raise RuntimeError("kept_positions: the layer holds nothing yet")
        batch, heads, _ = self.shape
        seq = self.keys.shape[-2] if self.keys is not None else self.seen_tokens
        return torch.arange(seq, device=self.device).expand(batch, heads, seq).clone()

    def finish_prefill(self, tokens: int | None = None) -> LayerPrefill:
        """End this layer's prefill leaving it exactly as the model made it; records and returns what it holds."""
        self.compression_pending = False
        if self._kept_positions is None:
            self._kept_positions = self.kept_positions()
        self.prefill = LayerPrefill(
            tokens=tokens, bytes=self.nbytes(), full_bytes=self.full_nbytes(), tokens_per_row=self.tokens_per_row(),
            seen_tokens=self.seen_tokens,
        )
        return self.prefill

    def compress(
        self,
        keep: torch.Tensor,
        quantizer: KVQuantizer,
        storage_dtype: torch.dtype,
        backend: AttentionBackend | None = None,
        tokens: int | None = None,
        order: torch.Tensor | None = None,
        tiers: Sequence[tuple[torch.Tensor, KVQuantizer]] | None = None,
        rotary: KeyRotary | None = None,
        position_offset: torch.Tensor | None = None,
    ) -> LayerPrefill:
        """Keep the tokens of ``keep`` (``[batch, kv_heads, seq]`` bool) and quantize what fills whole groups.

        Tokens keep their order within each row. Each row's first ``quantizer.quantizable(n)`` kept tokens are
        quantized; the rest (fewer than a group, for per-channel key groups) stay in 16 bits. ``backend`` is the
        attention this layer runs from now on (:mod:`qpruning.backends`); ``tokens`` the kept-token count it was
        given, recorded in what it returns (see :meth:`finish_prefill`). ``order`` ``[batch, heads, >= kept]``
        (``compat=paper``): the kept positions in the order the paper's code caches them (top-k order, then the
        window), used when every row keeps the same count and every kept token is quantized: the HQQ cache's groups
        along axis 0 depend on the order. Attention does not.

        ``tiers`` (precision per token, :mod:`qpruning.cache.tiers`): ``keep`` split into masks, each stored as its
        own segments by its own quantizer (as ``keep`` alone would be by ``quantizer``); ``quantizer`` then
        quantizes only the tokens added later.

        ``rotary`` (the layer's RoPE) is needed by a quantizer that quantizes keys before RoPE (``keys_pre_rope``:
        KVQuant); the key at cache index ``i`` of batch item ``b`` was rotated at position
        ``i - position_offset[b]`` (``[batch]``, default 0: the left padding when the prompt is padded). Only
        the quality of the quantization depends on the positions: dequantization re-applies RoPE at the position
        it was removed at.
        """
        assert self.keys is not None and self.values is not None  # a plain layer's, compressed now
        batch, heads, seq, head_dim = self.keys.shape
        if keep.shape != (batch, heads, seq):
            raise ValueError(f"keep mask of shape {tuple(keep.shape)} does not match the cache {(batch, heads, seq)}")
        if tiers is not None and not torch.equal(torch.stack([m for m, _ in tiers]).sum(0), keep.long()):
            raise ValueError("tiers: the masks must split the keep mask, each kept token in exactly one tier")
        self.quantizer = quantizer
        self.storage_dtype = storage_dtype
        self.rotation = Rotation.for_layer(head_dim, self.layer_idx) if quantizer.rotate else None
        if quantizer.keys_pre_rope and rotary is None:
            raise ValueError(f"quant={quantizer.name} quantizes keys before RoPE: compress needs the layer's rotary")
        self.rotary = rotary if quantizer.keys_pre_rope else None
        offset = torch.zeros(batch, dtype=torch.long) if position_offset is None else position_offset.long()
        self.position_offset = offset.to(self.keys.device)
        lengths = keep.sum(-1)  # [batch, heads]
        self._kept_positions = _positions(keep, lengths)
        self.kept_per_row = lengths.reshape(-1).to(torch.int32)
        segments: list[Segment] = []
        for mask, part_quantizer in tiers if tiers is not None else [(keep, quantizer)]:
            segments += self._segments(mask, part_quantizer, storage_dtype, order if tiers is None else None)
        self.prefix = segments
        self.decoded = None
        self.residual_keys = self.keys.new_empty(batch, heads, 0, head_dim, dtype=storage_dtype)
        self.residual_values = self.residual_keys.clone()
        if self.window is not None and not quantizer.enabled and len(segments) == 1 and segments[0].uniform_length:
            # a 16-bit sliding window of equally long rows is one residual that slides (flush), as the model's own
            assert isinstance(segments[0].keys, torch.Tensor) and isinstance(segments[0].values, torch.Tensor)
            self.residual_keys = segments[0].keys.view(batch, heads, -1, head_dim)
            self.residual_values = segments[0].values.view(batch, heads, -1, head_dim)
            self.prefix = []
        self.keys = self.values = None
        self.compressed = True
        self.backend = backend
        return self.finish_prefill(tokens)

    def _segments(
        self, keep: torch.Tensor, quantizer: KVQuantizer, storage_dtype: torch.dtype, order: torch.Tensor | None
    ) -> list[Segment]:
        """The segments that store the tokens of ``keep`` with ``quantizer``: the whole groups quantized (in
        blocks: :meth:`_blocks`), the rest of each row in 16 bits."""
        assert self.keys is not None and self.values is not None  # compress's
        stored = self._stored
        lengths = keep.sum(-1)  # [batch, heads]
        segments: list[Segment] = []
        if quantizer.enabled:
            quantized = quantizer.quantizable(lengths)
            assert isinstance(quantized, torch.Tensor)  # enabled: a count per row
            rank = keep.cumsum(-1) - 1
            in_quantized = keep & (rank < quantized.unsqueeze(-1))
            in_full = keep & ~in_quantized
            if int(quantized.sum()):
                scale_dtype = storage_dtype
                index = torch.arange(keep.shape[-1], device=keep.device).expand_as(keep)
                keys, values, positions = self._in_order(order, lengths, quantized, keep)
                if keys is None:
                    keys, values = self.keys[in_quantized], self.values[in_quantized]
                    positions = index[in_quantized]
                assert positions is not None  # set with the keys
                for block_keys, block_values, block_index, block_lengths in self._blocks(
                    keys, values, positions, quantized.reshape(-1)
                ):
                    segments.append(
                        Segment.build(
                            quantizer.quantize_keys(stored(block_keys), scale_dtype,
                                                    self._rope(block_index, block_lengths)),
                            quantizer.quantize_values(stored(block_values), scale_dtype),
                            block_lengths,
                        )
                    )
            tail = lengths - quantized
            if int(tail.sum()):
                segments.append(
                    Segment.build(
                        stored(self.keys[in_full]).to(storage_dtype),
                        stored(self.values[in_full]).to(storage_dtype),
                        tail.reshape(-1),
                    )
                )
        elif int(lengths.sum()):
            segments.append(
                Segment.build(
                    stored(self.keys[keep]).to(storage_dtype), stored(self.values[keep]).to(storage_dtype),
                    lengths.reshape(-1),
                )
            )
        return segments

    def _blocks(self, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor, lengths: torch.Tensor):
        """The kept tokens to quantize (``[n, head_dim]``, row by row, with their cache indices ``[n]``) as one
        run, or, in a sliding-window layer whose rows are equally long, as blocks of ``residual_length`` tokens per
        row, oldest first (so that the blocks that slide out of the window can be freed: :meth:`_evict`)."""
        first = int(lengths[0]) if lengths.numel() else 0
        assert self.quantizer is not None  # set by compress
        block = self.quantizer.residual_length
        assert block is not None  # KVQuantizer.__post_init__: group_size by default
        if self.window is None or not bool((lengths == first).all()) or first <= block:
            return [(keys, values, index, lengths)]
        rows, head_dim = lengths.numel(), keys.shape[-1]
        keys, values = keys.view(rows, first, head_dim), values.view(rows, first, head_dim)
        index = index.view(rows, first)
        # the first block takes the remainder, so that every later one is a whole block of the residual's size
        starts = [0, *range(first % block or block, first, block)]
        ends = [*starts[1:], first]
        return [
            (keys[:, a:b].reshape(-1, head_dim), values[:, a:b].reshape(-1, head_dim), index[:, a:b].reshape(-1),
             torch.full_like(lengths, b - a))
            for a, b in zip(starts, ends)
        ]

    def _rope(self, index: torch.Tensor, lengths: torch.Tensor) -> KeyRope | None:
        """The :class:`KeyRope` of keys at cache indices ``index`` ``[n]`` laid row by row (``lengths`` ``[rows]``),
        or ``None`` for a layer that does not quantize keys before RoPE."""
        if self.rotary is None:
            return None
        assert self.position_offset is not None and self.shape is not None  # set by compress
        batch = self.position_offset.numel()
        row_batch = torch.arange(self.rows, device=index.device) // (self.rows // batch)
        offset = self.position_offset[row_batch].repeat_interleave(lengths.long().to(index.device))
        return KeyRope(self.rotary, index - offset)

    def _evict(self) -> None:
        """Free the oldest segments of a sliding-window layer that no later query can see: the next query sees
        itself and the last ``window - 1`` tokens held, so a segment goes when every row holds at least
        ``window - 1`` tokens after it."""
        if self.window is None:
            return
        held = self.tokens_per_row()
        while self.prefix:
            after = held - self.prefix[0].lengths.long()
            if bool((after < self.window - 1).any()):
                break
            self.prefix.pop(0)
            held = after

    def _stored(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (``[..., head_dim]``) in the basis the layer stores: rotated (float32) when it has a rotation."""
        return x if self.rotation is None else self.rotation.rotate(x)

    def _in_order(self, order, lengths, quantized, keep):
        """The kept keys, values ``[n, head_dim]`` and cache indices ``[n]`` in ``order``'s order, or
        ``(None, None, None)`` when it does not apply (no order, rows of different lengths, or tokens left in 16
        bits)."""
        if order is None or not bool((quantized == lengths).all()) or int(lengths.min()) != int(lengths.max()):
            return None, None, None
        count = int(lengths.max())
        assert self.keys is not None and self.values is not None  # a plain layer's, being compressed
        index = order[..., :count]
        if not bool(keep.gather(-1, index).all()):
            raise ValueError("compress: order names positions that keep does not keep")
        positions = index.reshape(-1)
        index = index.unsqueeze(-1).expand(-1, -1, -1, self.keys.shape[-1])
        head_dim = self.keys.shape[-1]
        return (self.keys.gather(2, index).reshape(-1, head_dim), self.values.gather(2, index).reshape(-1, head_dim),
                positions)

    def flush(self) -> None:
        """Quantize the residual window, a block of ``residual_length`` tokens per row at a time (a 16-bit
        sliding-window layer instead keeps the last ``window - 1`` tokens of its residual)."""
        if not self.compressed:
            return
        assert self.quantizer is not None  # set by compress, with the residual and the storage dtype
        assert self.residual_keys is not None and self.residual_values is not None
        if not self.quantizer.enabled:
            if self.window is not None:
                self._evict()
                start = self.residual_keys.shape[2] - (self.window - 1)
                if not self.prefix and start > 0:
                    self.residual_keys = self.residual_keys[:, :, start:].contiguous()
                    self.residual_values = self.residual_values[:, :, start:].contiguous()
            return
        block = self.quantizer.residual_length
        assert block is not None and self.storage_dtype is not None  # KVQuantizer.__post_init__; compress
        pending = self.residual_keys.shape[2]
        if pending < block:
            return
        n = pending - pending % block
        batch, heads, _, head_dim = self.residual_keys.shape
        keys = self.residual_keys[:, :, :n].reshape(-1, head_dim)
        values = self.residual_values[:, :, :n].reshape(-1, head_dim)
        lengths = torch.full((batch * heads,), n, dtype=torch.int32, device=keys.device)
        # cache indices of the residual's first n tokens: the last `pending` seen
        first = self.seen_tokens - pending
        index = torch.arange(first, first + n, device=keys.device).repeat(batch * heads)
        new = Segment.build(
            self.quantizer.quantize_keys(keys, self.storage_dtype, self._rope(index, lengths)),
            self.quantizer.quantize_values(values, self.storage_dtype),
            lengths,
        )
        self.residual_keys = self.residual_keys[:, :, n:].contiguous()
        self.residual_values = self.residual_values[:, :, n:].contiguous()
        if self.window is not None:
            # blocks stay apart, oldest first, so that those sliding out of the window can be freed
            self.prefix.append(new)
            self._evict()
            return
        self.decoded = new if self.decoded is None else self.decoded.append_uniform(new)

    def segments(self) -> list[Segment]:
        """Every segment in token order: prefix (quantized, then 16-bit tail), decoded blocks, residual."""
        out = list(self.prefix)
        if self.decoded is not None:
            out.append(self.decoded)
        assert self.residual_keys is not None and self.residual_values is not None  # made by compress
        pending = self.residual_keys.shape[2]
        if pending:
            head_dim = self.residual_keys.shape[-1]
            lengths = torch.full((self.rows,), pending, dtype=torch.int32, device=self.residual_keys.device)
            out.append(
                Segment(
                    self.residual_keys.reshape(-1, head_dim),
                    self.residual_values.reshape(-1, head_dim),
                    lengths,
                    pending,
                )
            )
        return out

    # -- attention over the compressed layer --------------------------------------------------------------

    def attend(self, query: torch.Tensor, scaling: float, terms: AttentionTerms = PLAIN) -> torch.Tensor:
        """Attention of ``query`` ``[batch, q_heads, q, head_dim]`` over the layer, which already holds the
        ``q`` new tokens at the end of every row. Returns ``[batch, q, q_heads, head_dim]``.

        ``terms`` are the call's soft-capping and sinks (:class:`AttentionTerms`); a sliding-window layer adds its
        window.

        Runs the backend the layer was given at :meth:`compress` over :meth:`segments`: the PyTorch reference
        (dequantize into padded rows, exact float32 attention) or the fused Triton kernel for decode steps.
        A rotated layer (its segments hold ``k R`` and ``v R``) gives the backend ``q R`` and returns its output
        times ``R^T``: ``(q R) . (k R) = q . k`` and ``sum p (v R) R^T = sum p v``.
        """
        if self.backend is None:
            raise RuntimeError("This layer was compressed without an attention backend (compress(..., backend=...))")
        if self.window is not None:
            terms = AttentionTerms(softcap=terms.softcap, sinks=terms.sinks, window=self.window)
        extra = () if terms.plain else (terms,)
        if self.rotation is None:
            return self.backend(self.segments(), query, scaling, *extra)
        out = self.backend(self.segments(), self.rotation.rotate(query).to(query.dtype), scaling, *extra)
        return self.rotation.unrotate(out).to(out.dtype)

    # -- accounting ---------------------------------------------------------------------------------------

    def nbytes(self) -> dict[str, int]:
        """Bytes held, by kind, measured from the tensors (codes, scales, zeros, outliers, 16-bit tokens...)."""
        out = dict.fromkeys(BYTE_KINDS, 0)
        if not self.is_initialized:
            return out
        if not self.compressed:
            out["full"] = _nbytes(self.keys) + _nbytes(self.values)
            return out
        for segment in self.prefix + ([self.decoded] if self.decoded is not None else []):
            for kind, n in segment.nbytes().items():
                out[kind] += n
        out["residual"] = _nbytes(self.residual_keys) + _nbytes(self.residual_values)
        out["index"] += _nbytes(self.kept_per_row)
        if self.rotation is not None:
            out["rotation"] = self.rotation.nbytes()
        return out

    def full_nbytes(self) -> int:
        """Bytes the model's own uncompressed cache layer would hold at 16 bits for the tokens seen so far (padding
        included): every token of a global layer, at most ``window - 1`` of a sliding-window layer."""
        if self.shape is None:
            return 0
        batch, heads, head_dim = self.shape
        heads //= self.head_repeat  # the model's KV heads, whatever the layer holds
        tokens = _model_tokens(self.seen_tokens, self.window)
        return 2 * batch * heads * tokens * head_dim * FULL_CACHE_BYTES_PER_NUMBER

    def tokens_per_row(self) -> torch.Tensor:
        """Tokens held by each (batch item, KV head) row, ``[rows]``."""
        if not self.compressed:
            assert self.shape is not None and self.keys is not None  # a plain layer's, after its first update
            batch, heads, _ = self.shape
            return torch.full((batch * heads,), self.keys.shape[-2], dtype=torch.int64)
        assert self.residual_keys is not None  # made by compress
        total = torch.zeros(self.rows, dtype=torch.int64, device=self.residual_keys.device)
        for segment in self.segments():
            total += segment.lengths.long()
        return total


class SlidingLayer(DynamicSlidingWindowLayer):
    """A sliding-window layer kept as the model keeps it (``sliding=keep``): transformers' own
    ``DynamicSlidingWindowLayer`` (the last ``window - 1`` tokens in the model's dtype, the model's mask and
    attention), with the accounting and the prefill record of :class:`CompressedLayer`."""

    compressed = False

    def __init__(self, layer_idx: int = 0, window: int = 1) -> None:
        super().__init__(sliding_window=window)
        self.layer_idx = layer_idx
        self.window = window
        self.compression_pending = True
        self.prefill: LayerPrefill | None = None
        self.shape: tuple[int, int, int] | None = None
        self.head_repeat = 1

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        batch, heads, _, head_dim = key_states.shape
        self.shape = (batch, heads, head_dim)

    @property
    def seen_tokens(self) -> int:
        return self.cumulative_length

    def reset(self) -> None:
        self.__init__(self.layer_idx, self.window)  # type: ignore[misc]  # the layer's own first state, on purpose

    def finish_prefill(self, tokens: int | None = None) -> LayerPrefill:
        """End this layer's prefill (it keeps what the model's own layer keeps); records and returns what it holds."""
        self.compression_pending = False
        self.prefill = LayerPrefill(
            tokens=None, bytes=self.nbytes(), full_bytes=self.full_nbytes(), tokens_per_row=self.tokens_per_row(),
            seen_tokens=self.seen_tokens,
        )
        return self.prefill

    def kept_positions(self) -> torch.Tensor:
        """The positions the layer holds now, ``LongTensor [batch, kv_heads, held]`` (the last ones seen)."""
        if self.shape is None:
            raise RuntimeError("kept_positions: the layer holds nothing yet")
        batch, heads, _ = self.shape
        assert self.keys is not None  # made with the shape, by lazy_initialization
        held = self.keys.shape[-2]
        start = self.seen_tokens - held
        return torch.arange(start, start + held, device=self.device).expand(batch, heads, held).clone()

    def nbytes(self) -> dict[str, int]:
        out = dict.fromkeys(BYTE_KINDS, 0)
        if self.is_initialized:
            out["full"] = _nbytes(self.keys) + _nbytes(self.values)
        return out

    def full_nbytes(self) -> int:
        if self.shape is None:
            return 0
        batch, heads, head_dim = self.shape
        tokens = _model_tokens(self.seen_tokens, self.window)
        return 2 * batch * heads * tokens * head_dim * FULL_CACHE_BYTES_PER_NUMBER

    def tokens_per_row(self) -> torch.Tensor:
        assert self.shape is not None and self.keys is not None  # after the first update
        batch, heads, _ = self.shape
        return torch.full((batch * heads,), self.keys.shape[-2], dtype=torch.int64)


def _model_tokens(seen: int, window: int | None) -> int:
    """Tokens the model's own cache layer holds after ``seen`` tokens: all, or ``window - 1`` of a sliding one."""
    return seen if window is None else min(seen, window - 1)


def _positions(keep: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Ascending positions of ``keep`` ``[batch, heads, seq]``, ``[batch, heads, max kept]``, padded with -1."""
    seq = keep.shape[-1]
    kmax = int(lengths.max()) if lengths.numel() else 0
    index = torch.arange(seq, device=keep.device).expand_as(keep)
    positions = torch.where(keep, index, seq).sort(dim=-1).values[..., :kmax]
    return positions.masked_fill(positions == seq, -1)


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()
