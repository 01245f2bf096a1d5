"""The in-place decode path of the reference backend (issue 15): uniform rows dequantized straight into a reused
scratch buffer hold exactly the numbers of the segment-by-segment dequantization, and attention over them is
bit for bit the attention over freshly concatenated rows."""

import pytest
import torch

from qpruning import KIVI, FlexGen
from qpruning.backends import reference_attention
from qpruning.backends.reference import workspace
from qpruning.cache.hqq_cache import HQQCache
from qpruning.cache.packing import PACKABLE_BITS
from qpruning.cache.quantized import GroupAxis, QuantizedTensor
from qpruning.cache.quantizers import KIVIOutlier
from qpruning.cache.segments import gather_rows
from tests.cache.test_ragged import (
    BATCH,
    DIM,
    KV_HEADS,
    Q_HEADS,
    SCALE,
    SEQ,
    compressed_layer,
    decode,
    ragged_counts,
    random_keep,
)

QUANTIZERS = [
    FlexGen(bits=16),
    FlexGen(bits=4, group_size=64),
    KIVI(bits=2, group_size=32),
    KIVI(bits=4, group_size=64),
    KIVI(bits=8, group_size=32),
    KIVIOutlier(bits=4, group_size=32),
    # compat=paper's HQQ-cache tensors: hqq's groups and arithmetic, not this package's (their own dequantize)
    HQQCache(bits=8, group_size=64),
    HQQCache(bits=4, group_size=64, source="flexgen"),
    HQQCache(bits=2, group_size=64, source="kivi_outlier", outlier_threshold=1.5),
]
ROWS = BATCH * KV_HEADS


def concatenated_rows(segments):
    """The rows as the reference built them before issue 15: each segment dequantized whole, then concatenated."""
    keys, values = [], []
    for s in segments:
        k, v = s.dequantized(torch.float32)
        keys.append(k.view(ROWS, s.uniform_length, DIM))
        values.append(v.view(ROWS, s.uniform_length, DIM))
    return torch.cat(keys, 1), torch.cat(values, 1)


def attention_over(keys, values, query):
    """The reference's float32 attention over unpadded rows (no mask), on the given keys and values."""
    batch, q_heads, q_len, _ = query.shape
    group = q_heads // KV_HEADS
    seq = keys.shape[1]
    q = query.float().reshape(batch, KV_HEADS, group * q_len, DIM)
    logits = torch.matmul(q, keys.view(batch, KV_HEADS, seq, DIM).transpose(-1, -2)) * SCALE
    probs = torch.softmax(logits, dim=-1)
    out = torch.matmul(probs, values.view(batch, KV_HEADS, seq, DIM))
    return out.reshape(batch, q_heads, q_len, DIM).transpose(1, 2)


def uniform_layer(rng, quantizer, kept: int):
    keys = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    values = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    layer = compressed_layer(keys, values, random_keep(rng, [[kept] * KV_HEADS] * BATCH), quantizer)
    *_, query = decode(rng, layer, quantizer)
    return layer, query[:, :, -1:]


@pytest.mark.parametrize("bits", PACKABLE_BITS)
@pytest.mark.parametrize("axis", list(GroupAxis), ids=lambda a: a.name)
def test_in_place_dequantization_equals_dequantize_for_every_byte(bits, axis, rng):
    """Every byte value (so every code in every position of a byte), strided output, both group axes."""
    rows, length, d, g = 2, 128, 64, 32
    per_byte = 8 // bits
    packed = torch.randint(0, 256, (rows * length, d // per_byte), dtype=torch.uint8, generator=rng)
    packed[:256 // (d // per_byte) + 1].view(-1)[:256] = torch.arange(256, dtype=torch.uint8)
    groups = (rows * length, d // g) if axis is GroupAxis.CHANNELS else (rows * length // g, d)
    scale = (torch.rand(groups, generator=rng) + 0.1).half()
    zero = torch.randn(groups, generator=rng).half()
    tensor = QuantizedTensor(packed, scale, zero, bits, g, axis, d)
    buffer = torch.full((rows, length + 5, d), float("nan"))
    tensor.dequantize_into(buffer[:, 3:3 + length])
    assert torch.equal(buffer[:, 3:3 + length], tensor.dequantize(torch.float32).view(rows, length, d))
    assert buffer[:, :3].isnan().all() and buffer[:, 3 + length:].isnan().all()


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=lambda q: f"{q.name}{q.bits}g{q.group_size}")
@pytest.mark.parametrize("kept", [64, 77])
def test_scratch_rows_and_attention_equal_the_concatenated_rows_exactly(quantizer, kept, rng):
    layer, query = uniform_layer(rng, quantizer, kept)
    segments = layer.segments()
    assert all(s.uniform_length is not None for s in segments) and len(segments) >= 2
    expected_k, expected_v = concatenated_rows(segments)
    keys, values, valid, lengths = gather_rows(segments, torch.float32, ROWS, DIM, query.device, workspace("cpu"))
    assert valid is None and lengths.tolist() == [expected_k.shape[1]] * ROWS
    assert torch.equal(keys, expected_k) and torch.equal(values, expected_v)
    out = reference_attention(segments, query, SCALE)
    assert torch.equal(out, attention_over(expected_k, expected_v, query))


def test_the_scratch_buffer_is_reused_and_leaves_no_trace_between_layers(rng):
    """Layers of different sizes through one thread's buffer: each result depends only on its own layer."""
    big, q_big = uniform_layer(rng, KIVI(bits=4, group_size=32), 120)
    small, q_small = uniform_layer(rng, KIVI(bits=2, group_size=32), 40)
    first = reference_attention(small.segments(), q_small, SCALE)
    reference_attention(big.segments(), q_big, SCALE)
    buffer = workspace("cpu")(1)
    assert reference_attention(small.segments(), q_small, SCALE).equal(first)
    assert workspace("cpu")(1).data_ptr() == buffer.data_ptr()  # the same buffer, not a new one per call


def test_ragged_rows_still_take_the_padded_path(rng):
    keys = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    values = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    layer = compressed_layer(keys, values, random_keep(rng, ragged_counts(rng, 40)), KIVI(bits=4, group_size=32))
    keys, values, valid, lengths = gather_rows(layer.segments(), torch.float32, ROWS, DIM, keys.device, workspace("cpu"))
    assert valid is not None and not bool((lengths == lengths[0]).all())
    query = torch.randn(BATCH, Q_HEADS, 1, DIM, generator=rng)
    assert reference_attention(layer.segments(), query, SCALE).isfinite().all()
