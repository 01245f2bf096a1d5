"""Device code of the fused decode attention (Triton ``@jit`` functions); launched by
:mod:`qpruning.backends.triton.launch`, configured by :mod:`qpruning.backends.triton.heuristics`."""

from __future__ import annotations

import triton
import triton.language as tl


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
