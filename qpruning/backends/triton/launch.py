"""Fused decode attention straight from the packed KV cache (Triton, flash-decoding style): the host launcher.

One decode step (``q_len == 1``) of a compressed layer reads every segment of the layer
(:meth:`qpruning.cache.layer.CompressedLayer.segments`) exactly once, in place: packed 2/4/8-bit codes with their
16-bit scales and zeros, sparse outliers, and 16-bit segments (the residual window, 16-bit tails). Nothing is
dequantized into memory. See ``docs/kernels.md`` for the design; in short:

- grid ``(rows, splits)`` per segment, ``rows = batch * kv_heads``: one program reads one KV row once for all
  ``group = q_heads // kv_heads`` query heads of that row (GQA), over one split of the row's tokens;
- packed bytes are read as ``[BLOCK_N, head_dim * bits / 8]`` tiles and split into ``8 // bits`` *bit planes*
  with a shift and a mask (plane ``j`` of byte column ``c`` is channel ``c * (8 // bits) + j``); the query is
  read plane by plane in the same channel order, so the score is a sum of one small matmul per plane and nothing
  is ever reshuffled;
- scales and zeros are applied to the tile in registers, right before the matmul: a block of tokens lies in one
  per-channel key group (KIVI keys), so those are one scale/zero vector per block; per-token groups (FlexGen keys,
  all values) are a gathered ``[BLOCK_N, bytes]`` tile shared by all bit planes. ``fold_k=True`` instead folds
  per-channel key scales into the query, ``q . (code * s + z) = (q * s) . code + q . z`` (slower here: the
  query operand is replicated across warps, see ``docs/kernels.md``);
- outliers (``kivi_outlier``/``flexgen_outlier``) are handled exactly by a sparse correction inside the kernel:
  the outliers of each block (token-sorted, CSR) add ``q[c] * (x - dequant(x))`` to their token's score and
  ``p[token] * (x - dequant(x))`` to channel ``c`` of the output;
- each program writes its partial max / sum of exponentials / weighted values (float32); a small merge kernel
  combines the splits of all segments into the output, in the query's dtype.

The device code is in :mod:`qpruning.backends.triton.kernel`, block sizes and splits in
:mod:`qpruning.backends.triton.heuristics`. The PyTorch path (:func:`qpruning.backends.reference.reference_attention`)
stays the reference and the CPU path. This module imports Triton at import time: import it lazily
(``qpruning.backends.triton.fused_attention`` does). On CPU
tensors it runs under Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported), which is
how the tests check it without a GPU.
"""


from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qpruning.backends.triton.heuristics import (
    BLOCK_N,
    DOT_MODES,
    LOG2E,
    MERGE_BLOCK_S,
    MERGE_WARPS,
    kernel_config,
    segment_layout,
    split_rows,
)
from qpruning.backends.triton.kernel import _decode_segment_kernel, _merge_kernel
from qpruning.backends.triton.runtime import interpreting
from qpruning.cache.quantized import QuantizedTensor
from qpruning.cache.segments import Segment


class _TensorCache:
    """Small per-tensor memo (row offsets, outlier CSR) that forgets entries whose tensor was freed."""

    def __init__(self, limit: int = 512) -> None:
        self._entries: dict[int, tuple[weakref.ref, object]] = {}
        self._limit = limit

    def get(self, tensor: torch.Tensor, make):
        entry = self._entries.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        value = make(tensor)
        if len(self._entries) >= self._limit:
            self._entries = {k: e for k, e in self._entries.items() if e[0]() is not None}
            if len(self._entries) >= self._limit:
                self._entries.clear()
        self._entries[id(tensor)] = (weakref.ref(tensor), value)
        return value


_row_info = _TensorCache()
_outlier_csr_cache = _TensorCache()
_sm_counts: dict[int, int] = {}


def _ragged_rows(lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(offsets, max_length)`` of a ragged segment's rows (computed once per lengths tensor)."""

    def make(t: torch.Tensor):
        t64 = t.long()
        return (torch.cumsum(t64, 0) - t64).contiguous(), int(t64.max()) if t64.numel() else 0

    return _row_info.get(lengths, make)


@dataclass
class _OutlierCSR:
    """Outliers of one quantized tensor sorted by (token, channel), with per-token start pointers."""

    ptr: torch.Tensor  # int32 [n + 1]: token t's outliers are [ptr[t], ptr[t + 1])
    token: torch.Tensor  # int32 [k]
    channel: torch.Tensor  # int32 [k]
    value: torch.Tensor  # 16-bit [k]


def _outlier_csr(qt: QuantizedTensor) -> _OutlierCSR | None:
    if qt.outlier_index is None or qt.outlier_index.numel() == 0:
        return None
    n, d = qt.num_tokens, qt.head_dim
    outlier_value = qt.outlier_value
    assert outlier_value is not None  # the index and the values are set together

    def make(index: torch.Tensor) -> _OutlierCSR:
        flat, order = torch.sort(index.long())
        token = flat // d
        counts = torch.bincount(token, minlength=n)
        ptr = torch.zeros(n + 1, dtype=torch.int32, device=index.device)
        ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
        return _OutlierCSR(
            ptr, token.to(torch.int32), (flat % d).to(torch.int32), outlier_value[order].contiguous()
        )

    return _outlier_csr_cache.get(qt.outlier_index, make)


def _parts(t, dummy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (or 16-bit numbers), scales and zeros of keys or values (``dummy`` where there are none)."""
    if isinstance(t, QuantizedTensor):
        return t.packed.contiguous(), t.scale.contiguous(), t.zero.contiguous()
    return t.contiguous(), dummy, dummy


def _csr_args(t, dummy: torch.Tensor) -> tuple[bool, tuple[torch.Tensor, ...]]:
    csr = _outlier_csr(t) if isinstance(t, QuantizedTensor) else None
    if csr is None:
        return False, (dummy, dummy, dummy, dummy)
    return True, (csr.ptr, csr.token, csr.channel, csr.value)


def _check_interpreter_state(device: torch.device) -> None:
    """Refuse CPU tensors unless Triton runs interpreted, and a half-interpreted Triton, with a clear message.

    ``TRITON_INTERPRET=1`` must be set before *anything* imports ``triton.language`` (hqq and transformers do):
    Triton decorates its own ``tl.zeros``/``tl.sum`` helpers at import, so a later flag interprets our kernels
    but leaves those compiled-only, and every launch fails deep inside the interpreter.
    """
    if device.type == "cuda" and not interpreting():
        return
    if not interpreting():
        raise RuntimeError(
            f"The fused kernel got {device.type} tensors: it runs on CUDA, or on a CPU under Triton's interpreter "
            "(TRITON_INTERPRET=1 set before Python starts)"
        )
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.standard.zeros, InterpretedFunction) or not isinstance(_decode_segment_kernel, InterpretedFunction):
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after Triton was imported: set it before Python starts "
            "(e.g. TRITON_INTERPRET=1 python ...), not from inside the program"
        )


def attend_segments(
    segments: list[Segment],
    query: torch.Tensor,
    scaling: float,
    *,
    split_tokens: int | None = None,
    dot: str | None = None,
    fold_k: bool = False,
    block_n: int = BLOCK_N,
    num_warps: int | None = None,
    maxnreg: int | None = None,
) -> torch.Tensor:
    """Decode attention of ``query`` ``[batch, q_heads, 1, head_dim]`` over ``segments`` (in any order).

    The segments hold ``rows = batch * kv_heads`` rows each (:class:`qpruning.cache.segments.Segment`), and the
    new token is already in one of them. Returns ``[batch, 1, q_heads, head_dim]`` in ``query.dtype``.

    Options (the defaults are the tuned path): ``split_tokens`` forces the tokens per split; ``dot`` is the
    matmul operand precision, ``bf16`` (GPU default), ``bf16_emulated`` (interpreter default: the same rounding,
    float32 matmul), ``fp32`` (exact float32 everywhere, slow on a GPU: for tests) or ``tf32``; ``fold_k`` folds per-channel key
    scales into the query instead of dequantizing the key tile (see ``docs/kernels.md``); ``block_n``,
    ``num_warps`` and ``maxnreg`` (0: no register cap) override the heuristics of :func:`kernel_config`.
    """
    batch, q_heads, q_len, head_dim = query.shape
    if q_len != 1:
        raise ValueError(f"attend_segments computes one decode step (q_len=1), got q_len={q_len}")
    segments = [s for s in segments if s.num_tokens]
    if not segments:
        raise ValueError("No cached tokens to attend to")
    rows = segments[0].rows
    if rows % batch or q_heads % (rows // batch):
        raise ValueError(f"{rows} cache rows do not match a batch of {batch} with {q_heads} query heads")
    group = q_heads // (rows // batch)
    device = query.device
    _check_interpreter_state(device)
    if dot is None:
        dot = "bf16" if device.type == "cuda" and not interpreting() else "bf16_emulated"
    dot_mode, precision = DOT_MODES[dot]

    launches = []
    for seg in segments:
        uniform = seg.uniform_length is not None
        k_out, k_csr = _csr_args(seg.keys, seg.lengths)
        v_out, v_csr = _csr_args(seg.values, seg.lengths)
        constexprs, launch = kernel_config(
            segment_layout(seg, head_dim), group, uniform=uniform, k_outliers=k_out, v_outliers=v_out,
            dot=dot_mode, precision=precision, fold_k=fold_k, block_n=block_n, num_warps=num_warps,
            maxnreg=maxnreg,
        )
        max_length = seg.uniform_length if seg.uniform_length is not None else _ragged_rows(seg.lengths)[1]
        split, splits = split_rows(max_length, rows, constexprs["BLOCK_N"], device, split_tokens)
        launches.append((seg, constexprs, launch, k_csr, v_csr, split, splits))
    s_total = sum(launch[-1] for launch in launches)

    q = query.reshape(rows * group, head_dim)
    if not q.is_contiguous():
        q = q.contiguous()
    m = torch.empty(rows, group, s_total, dtype=torch.float32, device=device)
    lse = torch.empty_like(m)
    acc = torch.empty(rows, group, s_total, head_dim, dtype=torch.float32, device=device)
    qk_scale = float(scaling) * LOG2E
    base = 0
    for seg, constexprs, launch, k_csr, v_csr, split, splits in launches:
        k, ks, kz = _parts(seg.keys, q)
        v, vs, vz = _parts(seg.values, q)
        lengths = seg.lengths if seg.lengths.dtype == torch.int32 else seg.lengths.to(torch.int32)
        offsets = q if seg.uniform_length is not None else _ragged_rows(seg.lengths)[0]
        _decode_segment_kernel[(rows, splits)](
            q, k, v, ks, kz, vs, vz, lengths, offsets, *k_csr, *v_csr, m, lse, acc,
            group, seg.uniform_length or 0, split, base, s_total, qk_scale,
            **constexprs, **launch,
        )
        base += splits
    out = torch.empty(batch, 1, q_heads, head_dim, dtype=query.dtype, device=device)
    _merge_kernel[(rows * group,)](
        m, lse, acc, out, s_total, D=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_S=MERGE_BLOCK_S,
        num_warps=MERGE_WARPS,
    )
    return out


__all__ = ["attend_segments"]
