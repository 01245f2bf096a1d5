"""Runs of cached tokens, stored row by row without padding.

A *row* is one (batch item, KV head) pair: ``rows = batch * kv_heads``. A :class:`Segment` holds some tokens
of every row, laid end to end in row order (row 0's tokens, then row 1's...), as either a quantized tensor or a
16-bit tensor of shape ``[n, head_dim]``. Rows may hold different numbers of tokens (head-wise budgets, or
left-padded prompts shorter than the budget): the segment keeps each row's length, and nothing is padded. A
segment whose rows all have the same length is *uniform* and can be viewed as ``[rows, length, head_dim]``.

A compressed layer is a list of segments; attention runs over the concatenation, per row, of its segments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from qpruning.cache.quantized import QuantizedTensor, cat_rows


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class Segment:
    """Tokens of every row: ``keys``/``values`` are ``[n, head_dim]`` (quantized or not), ``lengths`` ``[rows]``.

    ``uniform_length`` is the common row length when all rows are equally long, else ``None``.
    """

    keys: QuantizedTensor | torch.Tensor
    values: QuantizedTensor | torch.Tensor
    lengths: torch.Tensor
    uniform_length: int | None

    @classmethod
    def build(cls, keys, values, lengths: torch.Tensor) -> Segment:
        lengths = lengths.to(torch.int32)
        first = int(lengths[0]) if lengths.numel() else 0
        uniform = first if bool((lengths == first).all()) else None
        return cls(keys, values, lengths, uniform)

    @property
    def rows(self) -> int:
        return self.lengths.numel()

    @property
    def num_tokens(self) -> int:
        keys = self.keys
        return keys.num_tokens if isinstance(keys, QuantizedTensor) else keys.shape[0]

    @property
    def quantized(self) -> bool:
        return isinstance(self.keys, QuantizedTensor)

    def dequantized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values as ``[n, head_dim]`` tensors of ``dtype``."""
        keys, values = self.keys, self.values
        if isinstance(keys, QuantizedTensor):
            assert isinstance(values, QuantizedTensor)  # keys and values are of one kind
            return keys.dequantize(dtype), values.dequantize(dtype)
        assert isinstance(values, torch.Tensor)
        return keys.to(dtype), values.to(dtype)

    def dequantize_into(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write this uniform segment's keys and values into float32 ``[rows, uniform_length, head_dim]`` views
        (e.g. slices of a work buffer), with the arithmetic of :meth:`dequantized`."""
        own_keys, own_values = self.keys, self.values
        if isinstance(own_keys, QuantizedTensor):
            assert isinstance(own_values, QuantizedTensor)  # keys and values are of one kind
            own_keys.dequantize_into(keys)
            own_values.dequantize_into(values)
        else:
            assert isinstance(own_values, torch.Tensor)
            keys.copy_(own_keys.view(keys.shape))
            values.copy_(own_values.view(values.shape))

    def nbytes(self) -> dict[str, int]:
        """Bytes held, by kind: packed codes, scales, zeros, outliers, full-precision tokens, row lengths."""
        out = {"packed": 0, "scales": 0, "zeros": 0, "outliers": 0, "full": 0, "index": _nbytes(self.lengths)}
        for t in (self.keys, self.values):
            if isinstance(t, QuantizedTensor):
                for kind, n in t.nbytes().items():
                    out[kind] += n
            else:
                out["full"] += _nbytes(t)
        return out

    def append_uniform(self, other: Segment) -> Segment:
        """Append ``other``'s tokens to every row of this segment (both uniform, same kind)."""
        if self.uniform_length is None or other.uniform_length is None:
            raise ValueError("Only uniform segments can be appended row by row")
        rows = self.rows
        keys: QuantizedTensor | torch.Tensor
        values: QuantizedTensor | torch.Tensor
        if isinstance(self.keys, QuantizedTensor):
            # Both segments are of one kind, and so are each one's keys and values.
            assert isinstance(self.values, QuantizedTensor)
            assert isinstance(other.keys, QuantizedTensor) and isinstance(other.values, QuantizedTensor)
            keys = cat_rows([self.keys, other.keys], rows)
            values = cat_rows([self.values, other.values], rows)
        else:
            assert isinstance(self.values, torch.Tensor)
            assert isinstance(other.keys, torch.Tensor) and isinstance(other.values, torch.Tensor)
            d = self.keys.shape[-1]
            keys = torch.cat([self.keys.view(rows, -1, d), other.keys.view(rows, -1, d)], 1).view(-1, d)
            values = torch.cat([self.values.view(rows, -1, d), other.values.view(rows, -1, d)], 1).view(-1, d)
        lengths = self.lengths + other.lengths
        return Segment(keys, values, lengths, self.uniform_length + other.uniform_length)


def gather_rows(
    segments: Sequence[Segment],
    dtype: torch.dtype,
    rows: int,
    head_dim: int,
    device: torch.device,
    workspace: Callable[[int], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Dequantize and lay the segments out as padded ``[rows, T, head_dim]`` keys and values.

    Row ``r`` holds its segments' tokens in segment order, followed by padding. Returns ``(keys, values,
    valid, lengths)``: ``valid`` is a ``[rows, T]`` mask of real tokens, or ``None`` when no row is padded;
    ``lengths`` is ``[rows]``. This is the reference path; the fused kernels read the segments directly.

    When every segment is uniform (no padding) and ``dtype`` is float32, each segment is dequantized straight
    into its place in the result; ``workspace(n)``, if given, returns a float32 buffer of at least ``n`` numbers
    to hold the result (a scratch buffer reused from call to call: the result is only valid until its next use).
    """
    segments = [s for s in segments if s.num_tokens or s.rows]
    uniform = [s.uniform_length for s in segments if s.uniform_length is not None]
    if len(uniform) == len(segments):
        total = sum(uniform)
        lengths = torch.full((rows,), total, dtype=torch.int64, device=device)
        if dtype == torch.float32:
            size = rows * total * head_dim
            flat = workspace(2 * size) if workspace is not None else torch.empty(2 * size, dtype=dtype, device=device)
            keys = flat[:size].view(rows, total, head_dim)
            values = flat[size : 2 * size].view(rows, total, head_dim)
            start = 0
            for s, length in zip(segments, uniform):
                end = start + length
                s.dequantize_into(keys[:, start:end], values[:, start:end])
                start = end
            return keys, values, None, lengths
        ks, vs = [], []
        for s, length in zip(segments, uniform):
            k, v = s.dequantized(dtype)
            ks.append(k.view(rows, length, head_dim))
            vs.append(v.view(rows, length, head_dim))
        keys = torch.cat(ks, dim=1) if ks else torch.empty(rows, 0, head_dim, dtype=dtype, device=device)
        values = torch.cat(vs, dim=1) if vs else torch.empty_like(keys)
        return keys, values, None, lengths

    lengths = torch.stack([s.lengths.long() for s in segments]).sum(0)
    t_max = int(lengths.max())
    keys = torch.zeros(rows, t_max, head_dim, dtype=dtype, device=device)
    values = torch.zeros_like(keys)
    base = torch.zeros(rows, dtype=torch.int64, device=device)
    row_ids = torch.arange(rows, device=device)
    for s in segments:
        seg_lengths = s.lengths.long()
        if s.num_tokens:
            k, v = s.dequantized(dtype)
            row_of = torch.repeat_interleave(row_ids, seg_lengths)
            starts = torch.cumsum(seg_lengths, 0) - seg_lengths
            position = torch.arange(s.num_tokens, device=device) - starts[row_of] + base[row_of]
            keys[row_of, position] = k
            values[row_of, position] = v
        base += seg_lengths
    valid = torch.arange(t_max, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    return keys, values, valid, lengths
