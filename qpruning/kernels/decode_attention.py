"""Fused decode attention straight from the packed KV cache (Triton, flash-decoding style).

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

The PyTorch path (:func:`qpruning.cache.layer.reference_attention`) stays the reference and the CPU path. This
module imports Triton at import time: import it lazily (``qpruning.kernels.fused_attention`` does). On CPU
tensors it runs under Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported), which is
how the tests check it without a GPU.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qpruning.cache.quantized import GroupAxis, QuantizedTensor
from qpruning.cache.segments import Segment
from qpruning.kernels import interpreting

LOG2E = 1.4426950408889634

# Axis codes of the kernel's K_AXIS / V_AXIS constexprs.
AXIS_PLAIN = 0  # a 16-bit segment: no codes, no scales
AXIS_CHANNELS = 1  # per-token groups of channels: scale/zero [n, head_dim // group]
AXIS_TOKENS = 2  # per-channel groups of tokens: scale/zero [n // group, head_dim]

# Operand precision of the kernel's matmuls (the DOT constexpr).
DOT_FP32 = 0  # float32 operands
DOT_BF16 = 1  # bfloat16 operands, float32 accumulation (the GPU default)
DOT_BF16_EMULATED = 2  # operands rounded to bfloat16, multiplied in float32 (the interpreter's stand-in for 1)

# ``dot=`` option -> (DOT, tl.dot's input_precision). "fp32" is exact float32 everywhere (FMA on a GPU: a
# correctness mode for tests), "tf32" uses TF32 tensor cores on a GPU; the interpreter ignores the precision.
DOT_MODES = {
    "fp32": (DOT_FP32, "ieee"),
    "tf32": (DOT_FP32, "tf32"),
    "bf16": (DOT_BF16, "tf32"),
    "bf16_emulated": (DOT_BF16_EMULATED, "ieee"),
}

BLOCK_G_MIN = 16  # tl.dot needs M >= 16 on GPUs: the group of query heads is padded to 16
BLOCK_O = 16  # outliers handled per step of the sparse correction
TARGET_PROGRAMS_PER_SM = 4  # split rows until a launch has about this many programs per SM
BLOCK_N = 64  # tokens per block (at most one per-channel group of tokens)
MERGE_WARPS = 2
MAXNREG = 128  # register cap of 8-warp programs (two per SM)
MERGE_BLOCK_S = 16  # splits merged per step


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _operand(x, DOT: tl.constexpr):
    """A float32 tile as a matmul operand (see DOT_*)."""
    if DOT == 1:
        return x.to(tl.bfloat16)
    elif DOT == 2:
        # Round to the nearest bfloat16 (ties to even) by hand, as the GPU's conversion does; the interpreter's
        # own float32 -> bfloat16 conversion truncates.
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x


@triton.jit
def _tile(tile, scale, zero, J: tl.constexpr, BITS: tl.constexpr, SCALED: tl.constexpr, DOT: tl.constexpr):
    """Bit plane ``J`` of a tile of packed bytes, dequantized (``code * scale + zero`` when ``SCALED``), as a
    matmul operand. A 16-bit tile (``BITS == 16``) is only converted.

    Self-contained on purpose (no nested jit calls): the interpreter re-patches ``triton.language`` at every
    nested call, which dominated its run time.
    """
    if BITS == 16:
        x = tile.to(tl.float32)
    elif BITS == 8:
        x = tile.to(tl.int32).to(tl.float32)
    else:
        # Shift and mask in int32, then int -> float32 (the interpreter mis-converts ints straight to bfloat16).
        x = ((tile.to(tl.int32) >> (J * BITS)) & ((1 << BITS) - 1)).to(tl.float32)
    if SCALED:
        x = x * scale + zero
    if DOT == 1:
        return x.to(tl.bfloat16)
    elif DOT == 2:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x


@triton.jit
def _outlier_delta(
    o_tok, o_ch, o_val, omask, packed_ptr, s_ptr, z_ptr,
    P: tl.constexpr, BITS: tl.constexpr, AXIS: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, DB: tl.constexpr,
):
    """``x - dequant(x)`` at each outlier (float32): what the dequantized tile misses there."""
    byte = tl.load(packed_ptr + o_tok * DB + o_ch // P, mask=omask, other=0).to(tl.int32)
    code = ((byte >> ((o_ch % P) * BITS)) & ((1 << BITS) - 1)).to(tl.float32)
    if AXIS == 2:
        sidx = (o_tok // GROUP) * D + o_ch
    else:
        sidx = o_tok * (D // GROUP) + o_ch // GROUP
    s = tl.load(s_ptr + sidx, mask=omask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + sidx, mask=omask, other=0.0).to(tl.float32)
    return tl.where(omask, o_val - (code * s + z), 0.0)


@triton.jit
def _scatter(w_op, o_ch, omask, c, J: tl.constexpr, P: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """``w[:, o]`` added to byte column ``o_ch[o] // P`` of bit plane ``J`` (a one-hot matmul)."""
    hit = (o_ch[:, None] // P == c[None, :]) & ((o_ch % P) == J)[:, None] & omask[:, None]
    return tl.dot(w_op, _operand(hit.to(tl.float32), DOT), input_precision=PRECISION)


@triton.jit
def _channel_planes(row_ptr, c, cmask, P: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr):
    """A per-channel vector (``[P * BLOCK_C]`` channels at ``row_ptr``) split into its ``P`` bit planes, float32.

    Plane ``j`` holds channels ``c * P + j``. With ``EVEN_C`` the row is loaded contiguously (vectorized) and split
    in registers; otherwise each plane is gathered with a stride of ``P``. Unused planes are copies of plane 0.
    """
    if EVEN_C:
        x = tl.load(row_ptr + tl.arange(0, BLOCK_C * P)).to(tl.float32)
        if P == 1:
            v0 = x
            v1 = x
            v2 = x
            v3 = x
        elif P == 2:
            v0, v1 = tl.split(tl.reshape(x, [BLOCK_C, 2]))
            v2 = v0
            v3 = v0
        else:
            even, odd = tl.split(tl.reshape(x, [BLOCK_C, 2, 2]))  # channels 4c + {0, 2} and 4c + {1, 3}
            v0, v2 = tl.split(even)
            v1, v3 = tl.split(odd)
    else:
        v0 = tl.load(row_ptr + c * P, mask=cmask, other=0.0).to(tl.float32)
        v1 = v0
        v2 = v0
        v3 = v0
        if P > 1:
            v1 = tl.load(row_ptr + c * P + 1, mask=cmask, other=0.0).to(tl.float32)
        if P > 2:
            v2 = tl.load(row_ptr + c * P + 2, mask=cmask, other=0.0).to(tl.float32)
            v3 = tl.load(row_ptr + c * P + 3, mask=cmask, other=0.0).to(tl.float32)
    return v0, v1, v2, v3


@triton.jit
def _group_tile(
    s_ptr, first, nn, nmask, c, tmask,
    NG: tl.constexpr, GB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BROADCAST: tl.constexpr,
):
    """Scales (or zeros) of per-token groups of channels as a ``[BLOCK_N, BLOCK_C]`` float32 tile.

    Token ``n`` has ``NG`` groups; byte column ``c`` of every bit plane lies in group ``c // GB`` (``GB`` byte
    columns per group and plane). With ``BROADCAST`` (byte columns a power of two) the ``[BLOCK_N, NG]`` numbers
    are loaded once and broadcast over their columns; otherwise gathered per column.
    """
    if BROADCAST:
        gi = tl.arange(0, NG)
        small = tl.load(s_ptr + first * NG + nn[:, None] * NG + gi[None, :], mask=nmask[:, None], other=0.0)
        wide = tl.broadcast_to(small.to(tl.float32)[:, :, None], [BLOCK_N, NG, GB])
        return tl.reshape(wide, [BLOCK_N, BLOCK_C])
    else:
        sidx = first * NG + nn[:, None] * NG + (c // GB)[None, :]
        return tl.load(s_ptr + sidx, mask=tmask, other=0.0).to(tl.float32)


@triton.jit
def _decode_segment_kernel(
    q_ptr, k_ptr, v_ptr, ks_ptr, kz_ptr, vs_ptr, vz_ptr,
    len_ptr, off_ptr,
    ko_ptr_ptr, ko_tok_ptr, ko_ch_ptr, ko_val_ptr,
    vo_ptr_ptr, vo_tok_ptr, vo_ch_ptr, vo_val_ptr,
    m_ptr, l_ptr, acc_ptr,
    G, uniform_len, split_tokens, split_base, S_total, qk_scale,
    D: tl.constexpr, DB: tl.constexpr, P: tl.constexpr, BITS: tl.constexpr,
    K_AXIS: tl.constexpr, V_AXIS: tl.constexpr, K_GROUP: tl.constexpr, V_GROUP: tl.constexpr,
    UNIFORM: tl.constexpr, K_OUTLIERS: tl.constexpr, V_OUTLIERS: tl.constexpr, DOT: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
    EVEN_C: tl.constexpr, FOLD_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """Partial attention of one (row, split) of one segment; see the module docstring.

    Shapes: the query heads of the row ``[BLOCK_G]`` (``G`` real), a block of tokens ``[BLOCK_N]``, the byte
    columns of one bit plane ``[BLOCK_C]`` (``DB`` real). Plane ``j`` of byte column ``c`` is channel
    ``c * P + j``; everything per channel (query, per-channel scales, the output) is read or written in that
    order, so codes are never moved between lanes.
    """
    row = tl.program_id(0)
    split = tl.program_id(1)
    row64 = row.to(tl.int64)
    length = tl.load(len_ptr + row)
    if UNIFORM:
        row_off = row64 * uniform_len
    else:
        row_off = tl.load(off_ptr + row).to(tl.int64)
    start = split * split_tokens
    end = tl.minimum(start + split_tokens, length)

    g = tl.arange(0, BLOCK_G)
    gmask = g < G
    c = tl.arange(0, BLOCK_C)
    cmask = c < DB
    qmask = gmask[:, None] & cmask[None, :]
    q_row = q_ptr + (row64 * G + g[:, None]) * D
    nn = tl.arange(0, BLOCK_N)
    o = tl.arange(0, BLOCK_O)

    # The query, one bit plane at a time, as float32 (q*) and as matmul operands (a*). Planes that a byte does
    # not have are unused copies, removed by the compiler.
    q0 = tl.load(q_row + c[None, :] * P, mask=qmask, other=0.0).to(tl.float32)
    q1 = q0
    q2 = q0
    q3 = q0
    if P > 1:
        q1 = tl.load(q_row + c[None, :] * P + 1, mask=qmask, other=0.0).to(tl.float32)
    if P > 2:
        q2 = tl.load(q_row + c[None, :] * P + 2, mask=qmask, other=0.0).to(tl.float32)
        q3 = tl.load(q_row + c[None, :] * P + 3, mask=qmask, other=0.0).to(tl.float32)
    a0 = _operand(q0, DOT)
    a1 = a0
    a2 = a0
    a3 = a0
    if P > 1:
        a1 = _operand(q1, DOT)
    if P > 2:
        a2 = _operand(q2, DOT)
        a3 = _operand(q3, DOT)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc0 = tl.zeros([BLOCK_G, BLOCK_C], tl.float32)
    acc1 = tl.zeros([BLOCK_G, BLOCK_C], tl.float32)
    acc2 = tl.zeros([BLOCK_G, BLOCK_C], tl.float32)
    acc3 = tl.zeros([BLOCK_G, BLOCK_C], tl.float32)

    for n0 in range(start, end, BLOCK_N):
        nmask = (n0 + nn) < end
        first = row_off + n0  # int64: flat index of the block's first token in the segment
        # In-block offsets stay int32; the int64 part is one scalar base pointer per block.
        tile = nn[:, None] * DB + c[None, :]
        if EVEN_C:
            tmask = nmask[:, None] & (c[None, :] < BLOCK_C)
        else:
            tmask = nmask[:, None] & cmask[None, :]

        # ---- scores: q . k per bit plane, [BLOCK_G, BLOCK_N] --------------------------------------------
        kb = tl.load(k_ptr + first * DB + tile, mask=tmask, other=0)
        if K_AXIS == 2:
            # Per-channel groups of tokens (KIVI keys): the block lies in one group (BLOCK_N divides it), so
            # each channel has one scale and zero for the whole block.
            s0, s1, s2, s3 = _channel_planes(ks_ptr + (first // K_GROUP) * D, c, cmask, P, BLOCK_C, EVEN_C)
            z0, z1, z2, z3 = _channel_planes(kz_ptr + (first // K_GROUP) * D, c, cmask, P, BLOCK_C, EVEN_C)
            if FOLD_K:
                # Folded into the query: q . (code * s + z) = (q * s) . code + q . z.
                scores = tl.dot(_operand(q0 * s0[None, :], DOT), tl.trans(_tile(kb, 0, 0, 0, BITS, False, DOT)), input_precision=PRECISION)
                bias = tl.sum(q0 * z0[None, :], axis=1)
                if P > 1:
                    scores += tl.dot(_operand(q1 * s1[None, :], DOT), tl.trans(_tile(kb, 0, 0, 1, BITS, False, DOT)), input_precision=PRECISION)
                    bias += tl.sum(q1 * z1[None, :], axis=1)
                if P > 2:
                    scores += tl.dot(_operand(q2 * s2[None, :], DOT), tl.trans(_tile(kb, 0, 0, 2, BITS, False, DOT)), input_precision=PRECISION)
                    scores += tl.dot(_operand(q3 * s3[None, :], DOT), tl.trans(_tile(kb, 0, 0, 3, BITS, False, DOT)), input_precision=PRECISION)
                    bias += tl.sum(q2 * z2[None, :], axis=1) + tl.sum(q3 * z3[None, :], axis=1)
                scores += bias[:, None]
            else:
                # Dequantized in registers, the per-channel scale and zero broadcast over the block's tokens.
                scores = tl.dot(a0, tl.trans(_tile(kb, s0[None, :], z0[None, :], 0, BITS, True, DOT)), input_precision=PRECISION)
                if P > 1:
                    scores += tl.dot(a1, tl.trans(_tile(kb, s1[None, :], z1[None, :], 1, BITS, True, DOT)), input_precision=PRECISION)
                if P > 2:
                    scores += tl.dot(a2, tl.trans(_tile(kb, s2[None, :], z2[None, :], 2, BITS, True, DOT)), input_precision=PRECISION)
                    scores += tl.dot(a3, tl.trans(_tile(kb, s3[None, :], z3[None, :], 3, BITS, True, DOT)), input_precision=PRECISION)
        elif K_AXIS == 1:
            # Per-token groups of channels (FlexGen keys): byte column c of every plane is in channel group
            # c // (K_GROUP // P), so one [BLOCK_N, BLOCK_C] scale tile serves all planes.
            ks = _group_tile(ks_ptr, first, nn, nmask, c, tmask, D // K_GROUP, K_GROUP // P, BLOCK_N, BLOCK_C, EVEN_C)
            kz = _group_tile(kz_ptr, first, nn, nmask, c, tmask, D // K_GROUP, K_GROUP // P, BLOCK_N, BLOCK_C, EVEN_C)
            scores = tl.dot(a0, tl.trans(_tile(kb, ks, kz, 0, BITS, True, DOT)), input_precision=PRECISION)
            if P > 1:
                scores += tl.dot(a1, tl.trans(_tile(kb, ks, kz, 1, BITS, True, DOT)), input_precision=PRECISION)
            if P > 2:
                scores += tl.dot(a2, tl.trans(_tile(kb, ks, kz, 2, BITS, True, DOT)), input_precision=PRECISION)
                scores += tl.dot(a3, tl.trans(_tile(kb, ks, kz, 3, BITS, True, DOT)), input_precision=PRECISION)
        else:
            scores = tl.dot(a0, tl.trans(_tile(kb, 0, 0, 0, BITS, False, DOT)), input_precision=PRECISION)

        if K_OUTLIERS:
            # Sparse correction: q[c] * (x - dequant(x)) for every key outlier (token, c) of this block.
            o_lo = tl.load(ko_ptr_ptr + first)
            o_hi = tl.load(ko_ptr_ptr + row_off + tl.minimum(n0 + BLOCK_N, end))
            for o0 in range(o_lo, o_hi, BLOCK_O):
                oi = o0 + o
                omask = oi < o_hi
                o_tok = tl.load(ko_tok_ptr + oi, mask=omask, other=0).to(tl.int64)
                o_ch = tl.load(ko_ch_ptr + oi, mask=omask, other=0)
                o_val = tl.load(ko_val_ptr + oi, mask=omask, other=0.0).to(tl.float32)
                delta = _outlier_delta(o_tok, o_ch, o_val, omask, k_ptr, ks_ptr, kz_ptr, P, BITS, K_AXIS, K_GROUP, D, DB)
                q_at = tl.load(q_row + o_ch[None, :], mask=gmask[:, None] & omask[None, :], other=0.0).to(tl.float32)
                hit = ((o_tok - first).to(tl.int32)[:, None] == nn[None, :]) & omask[:, None]
                scores += tl.dot(_operand(q_at * delta[None, :], DOT), _operand(hit.to(tl.float32), DOT), input_precision=PRECISION)

        # ---- online softmax (base 2) --------------------------------------------------------------------
        scores = tl.where(nmask[None, :], scores * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))  # finite: every block has a real token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        p_sum = tl.sum(p, axis=1)
        l_i = l_i * alpha + p_sum
        m_i = m_new
        p_op = _operand(p, DOT)
        acc0 = acc0 * alpha[:, None]
        acc1 = acc1 * alpha[:, None]
        acc2 = acc2 * alpha[:, None]
        acc3 = acc3 * alpha[:, None]

        # ---- values: p @ v per bit plane, [BLOCK_G, BLOCK_C] --------------------------------------------
        vb = tl.load(v_ptr + first * DB + tile, mask=tmask, other=0)
        if V_AXIS == 2:
            # Per-channel groups of tokens: p @ (code * s + z) = (p @ code) * s + sum(p) * z.
            vs0, vs1, vs2, vs3 = _channel_planes(vs_ptr + (first // V_GROUP) * D, c, cmask, P, BLOCK_C, EVEN_C)
            vz0, vz1, vz2, vz3 = _channel_planes(vz_ptr + (first // V_GROUP) * D, c, cmask, P, BLOCK_C, EVEN_C)
            acc0 += tl.dot(p_op, _tile(vb, 0, 0, 0, BITS, False, DOT), input_precision=PRECISION) * vs0[None, :] + p_sum[:, None] * vz0[None, :]
            if P > 1:
                acc1 += tl.dot(p_op, _tile(vb, 0, 0, 1, BITS, False, DOT), input_precision=PRECISION) * vs1[None, :] + p_sum[:, None] * vz1[None, :]
            if P > 2:
                acc2 += tl.dot(p_op, _tile(vb, 0, 0, 2, BITS, False, DOT), input_precision=PRECISION) * vs2[None, :] + p_sum[:, None] * vz2[None, :]
                acc3 += tl.dot(p_op, _tile(vb, 0, 0, 3, BITS, False, DOT), input_precision=PRECISION) * vs3[None, :] + p_sum[:, None] * vz3[None, :]
        elif V_AXIS == 1:
            # Per-token groups of channels (KIVI and FlexGen values): one scale tile for all planes.
            vs = _group_tile(vs_ptr, first, nn, nmask, c, tmask, D // V_GROUP, V_GROUP // P, BLOCK_N, BLOCK_C, EVEN_C)
            vz = _group_tile(vz_ptr, first, nn, nmask, c, tmask, D // V_GROUP, V_GROUP // P, BLOCK_N, BLOCK_C, EVEN_C)
            acc0 += tl.dot(p_op, _tile(vb, vs, vz, 0, BITS, True, DOT), input_precision=PRECISION)
            if P > 1:
                acc1 += tl.dot(p_op, _tile(vb, vs, vz, 1, BITS, True, DOT), input_precision=PRECISION)
            if P > 2:
                acc2 += tl.dot(p_op, _tile(vb, vs, vz, 2, BITS, True, DOT), input_precision=PRECISION)
                acc3 += tl.dot(p_op, _tile(vb, vs, vz, 3, BITS, True, DOT), input_precision=PRECISION)
        else:
            acc0 += tl.dot(p_op, _tile(vb, 0, 0, 0, BITS, False, DOT), input_precision=PRECISION)

        if V_OUTLIERS:
            # Sparse correction: p[token] * (x - dequant(x)) into channel c, for every value outlier of the block.
            o_lo = tl.load(vo_ptr_ptr + first)
            o_hi = tl.load(vo_ptr_ptr + row_off + tl.minimum(n0 + BLOCK_N, end))
            for o0 in range(o_lo, o_hi, BLOCK_O):
                oi = o0 + o
                omask = oi < o_hi
                o_tok = tl.load(vo_tok_ptr + oi, mask=omask, other=0).to(tl.int64)
                o_ch = tl.load(vo_ch_ptr + oi, mask=omask, other=0)
                o_val = tl.load(vo_val_ptr + oi, mask=omask, other=0.0).to(tl.float32)
                delta = _outlier_delta(o_tok, o_ch, o_val, omask, v_ptr, vs_ptr, vz_ptr, P, BITS, V_AXIS, V_GROUP, D, DB)
                hit = (nn[:, None] == (o_tok - first).to(tl.int32)[None, :]) & omask[None, :]
                p_at = tl.dot(p_op, _operand(hit.to(tl.float32), DOT), input_precision=PRECISION)  # [BLOCK_G, BLOCK_O]: p at each outlier
                w_op = _operand(p_at * delta[None, :], DOT)
                acc0 += _scatter(w_op, o_ch, omask, c, 0, P, DOT, PRECISION)
                if P > 1:
                    acc1 += _scatter(w_op, o_ch, omask, c, 1, P, DOT, PRECISION)
                if P > 2:
                    acc2 += _scatter(w_op, o_ch, omask, c, 2, P, DOT, PRECISION)
                    acc3 += _scatter(w_op, o_ch, omask, c, 3, P, DOT, PRECISION)

    # ---- partial results: [rows, G, S_total] max and sum, [rows, G, S_total, D] weighted values ------------
    slot = (row64 * G + g) * S_total + split_base + split
    tl.store(m_ptr + slot, m_i, mask=gmask)
    tl.store(l_ptr + slot, l_i, mask=gmask)
    out = acc_ptr + slot[:, None] * D + c[None, :] * P
    tl.store(out, acc0, mask=qmask)
    if P > 1:
        tl.store(out + 1, acc1, mask=qmask)
    if P > 2:
        tl.store(out + 2, acc2, mask=qmask)
        tl.store(out + 3, acc3, mask=qmask)


@triton.jit
def _merge_kernel(
    m_ptr, l_ptr, acc_ptr, out_ptr, S_total, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr
):
    """Combine the partial results of every split of every segment, for one (row, query head).

    The program id is ``row * group + g``, which is also the (batch item, query head) index of the
    ``[batch, 1, q_heads, head_dim]`` output. Splits without tokens have max ``-inf`` and weigh nothing; the
    splits are read ``BLOCK_S`` at a time and merged online (the count changes every step, the code does not).
    """
    pid = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    s = tl.arange(0, BLOCK_S)
    base = pid * S_total
    m_run = tl.full([1], float("-inf"), tl.float32)
    l_run = tl.zeros([1], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, S_total, BLOCK_S):
        smask = (s0 + s) < S_total
        m = tl.load(m_ptr + base + s0 + s, mask=smask, other=float("-inf"))
        lse = tl.load(l_ptr + base + s0 + s, mask=smask, other=0.0)
        part = tl.load(
            acc_ptr + (base + s0 + s)[:, None] * D + d[None, :], mask=smask[:, None] & dmask[None, :], other=0.0
        )
        m_new = tl.maximum(m_run, tl.max(m, axis=0))
        alpha = tl.where(m_run == float("-inf"), 0.0, tl.exp2(m_run - m_new))
        w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - m_new))
        l_run = l_run * alpha + tl.sum(w * lse, axis=0)
        acc = acc * alpha + tl.sum(w[:, None] * part, axis=0)
        m_run = m_new
    tl.store(out_ptr + pid * D + d, (acc / l_run).to(out_ptr.dtype.element_ty), mask=dmask)


# ---------------------------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------------------------


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

    def make(index: torch.Tensor) -> _OutlierCSR:
        flat, order = torch.sort(index.long())
        token = flat // d
        counts = torch.bincount(token, minlength=n)
        ptr = torch.zeros(n + 1, dtype=torch.int32, device=index.device)
        ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
        return _OutlierCSR(
            ptr, token.to(torch.int32), (flat % d).to(torch.int32), qt.outlier_value[order].contiguous()
        )

    return _outlier_csr_cache.get(qt.outlier_index, make)


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _sm_counts:
        _sm_counts[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _sm_counts[index]


def _axis_code(axis: GroupAxis) -> int:
    return AXIS_TOKENS if axis is GroupAxis.TOKENS else AXIS_CHANNELS


@dataclass(frozen=True)
class Layout:
    """How a segment's keys and values are stored: what specializes the segment kernel.

    ``bits`` 16 means a plain 16-bit segment (axes ``AXIS_PLAIN``, groups 1).
    """

    bits: int
    k_axis: int
    v_axis: int
    k_group: int
    v_group: int
    head_dim: int

    @property
    def planes(self) -> int:
        """Codes per byte (1 for 16-bit segments)."""
        return 1 if self.bits == 16 else 8 // self.bits

    @property
    def byte_cols(self) -> int:
        """Bytes (packed) or numbers (16-bit) per token and row: ``head_dim * bits / 8``."""
        return self.head_dim // self.planes


def segment_layout(segment: Segment, head_dim: int) -> Layout:
    keys, values = segment.keys, segment.values
    if isinstance(keys, QuantizedTensor):
        if not isinstance(values, QuantizedTensor) or values.bits != keys.bits:
            raise ValueError("A quantized segment needs keys and values quantized with the same bits")
        layout = Layout(
            keys.bits, _axis_code(keys.axis), _axis_code(values.axis), keys.group_size, values.group_size, head_dim
        )
    else:
        layout = Layout(16, AXIS_PLAIN, AXIS_PLAIN, 1, 1, head_dim)
    if head_dim % layout.planes:
        raise ValueError(f"head_dim={head_dim} is not a multiple of the {layout.planes} codes packed per byte")
    return layout


def kernel_config(
    layout: Layout,
    group: int,
    *,
    uniform: bool = True,
    k_outliers: bool = False,
    v_outliers: bool = False,
    dot: int = DOT_BF16,
    precision: str = "tf32",
    fold_k: bool = False,
    block_n: int = BLOCK_N,
    num_warps: int | None = None,
    maxnreg: int | None = None,
) -> tuple[dict, dict]:
    """The segment kernel's constexprs and launch options (``num_warps``, ``maxnreg``) for one layout; launches
    and ``compile_check`` share it.

    Heuristics, no autotuning: blocks of ``BLOCK_N`` tokens (no more than a per-channel group of tokens, so that a
    block shares one scale/zero per channel), the group of query heads padded to 16 (``tl.dot``'s minimum), the
    byte columns padded to a power of two (at least 16), 8 warps for 64-token blocks and 4 below, and with 8
    warps a cap of 128 registers per thread (two programs per SM instead of one) where it causes no spills on
    sm_80/sm_90 (``compile_check``: bf16 operands, no outliers, no ``fold_k``, not 2 bits). ``maxnreg=0``
    lifts the cap.
    """
    for axis, g in ((layout.k_axis, layout.k_group), (layout.v_axis, layout.v_group)):
        if axis == AXIS_TOKENS:
            block_n = min(block_n, g)
            if g % block_n:
                raise ValueError(f"block_n={block_n} must divide the token group size {g}")
    block_c = max(16, triton.next_power_of_2(layout.byte_cols))
    if num_warps is None:
        num_warps = 8 if block_n >= 64 else 4
    if maxnreg is None:
        # Only for the bf16 path without outliers and with 1 or 2 planes: the outlier correction needs ~180
        # registers, 2-bit codes (4 planes), float32 operands and fold_k spill at 128.
        capped = dot == DOT_BF16 and not (k_outliers or v_outliers or fold_k) and layout.bits != 2
        maxnreg = MAXNREG if num_warps == 8 and capped else 0
    launch = {"num_warps": num_warps}
    if maxnreg:
        launch["maxnreg"] = maxnreg
    constexprs = dict(
        D=layout.head_dim, DB=layout.byte_cols, P=layout.planes, BITS=layout.bits,
        K_AXIS=layout.k_axis, V_AXIS=layout.v_axis, K_GROUP=layout.k_group, V_GROUP=layout.v_group,
        UNIFORM=uniform, K_OUTLIERS=k_outliers, V_OUTLIERS=v_outliers, DOT=dot,
        BLOCK_G=max(BLOCK_G_MIN, triton.next_power_of_2(group)), BLOCK_N=block_n, BLOCK_C=block_c,
        BLOCK_O=BLOCK_O, EVEN_C=block_c == layout.byte_cols, FOLD_K=fold_k, PRECISION=precision,
    )
    return constexprs, launch


def split_rows(
    max_length: int, rows: int, block_n: int, device: torch.device, split_tokens: int | None = None
) -> tuple[int, int]:
    """``(tokens per split, splits)`` for rows of up to ``max_length`` tokens (flash-decoding).

    By default a row is split so that the launch has about ``TARGET_PROGRAMS_PER_SM`` programs per streaming
    multiprocessor (long rows and small batches get many splits, large batches one), a whole number of blocks
    per split; ``split_tokens`` forces the tokens per split (rounded up to a whole block).
    """
    blocks = max(1, triton.cdiv(max_length, block_n))
    if split_tokens is None:
        target = TARGET_PROGRAMS_PER_SM * _sm_count(device)
        per_row = max(1, min(blocks, triton.cdiv(target, max(1, rows))))
        split_blocks = triton.cdiv(blocks, per_row)
    else:
        split_blocks = max(1, triton.cdiv(split_tokens, block_n))
    split = split_blocks * block_n
    return split, max(1, triton.cdiv(max_length, split))


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
        max_length = seg.uniform_length if uniform else _ragged_rows(seg.lengths)[1]
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


def attend_layer(layer, query: torch.Tensor, scaling: float, **options) -> torch.Tensor:
    """Attention of ``query`` over a compressed layer; equals :func:`qpruning.cache.layer.reference_attention`.

    Decode steps (``q_len == 1``) run the fused kernel; longer queries (a question appended after the context,
    chunked prefill) take the PyTorch reference path, which handles the causal mask among the new tokens.
    ``options`` go to :func:`attend_segments`.
    """
    from qpruning.cache.layer import reference_attention

    if query.shape[2] != 1:
        return reference_attention(layer, query, scaling)
    return attend_segments(layer.segments(), query, scaling, **options)


__all__ = ["Layout", "attend_layer", "attend_segments", "interpreting", "kernel_config", "segment_layout", "split_rows"]
