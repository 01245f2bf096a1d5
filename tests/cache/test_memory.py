"""The bytes a compressed cache reports are the bytes its tensors hold, and they follow the formula."""

import pytest
import torch

from qpruning import KIVI, FlexGen, KIVIOutlier, KVCompressor, SnapKV
from qpruning.cache.budget import row_bytes, tokens_for_budget
from qpruning.cache.context import reset_active_forward, set_active_forward
from qpruning.cache.layer import CompressedLayer
from qpruning.cache.quantizers import KVQuantizer
from qpruning.transformers_api import cache_kwargs

BATCH, HEADS, SEQ, DIM = 2, 3, 300, 128


def make_layer(rng, dtype=torch.float16):
    layer = CompressedLayer()
    k = torch.randn(BATCH, HEADS, SEQ, DIM, generator=rng).to(dtype)
    v = torch.randn(BATCH, HEADS, SEQ, DIM, generator=rng).to(dtype)
    layer.update(k, v)
    return layer


def random_keep(rng, counts):
    """A keep mask with counts[b][h] tokens in each row, at random positions."""
    keep = torch.zeros(BATCH, HEADS, SEQ, dtype=torch.bool)
    for b in range(BATCH):
        for h in range(HEADS):
            keep[b, h, torch.randperm(SEQ, generator=rng)[: counts[b][h]]] = True
    return keep


def formula(counts, quantizer: KVQuantizer, decoded=0, residual=0, element=2):
    """Bytes by the storage rules, written out independently of the cache code; ``element`` is the size of a
    number of the storage dtype (scales, zeros, tails, residual; 2 for float16 and bfloat16)."""
    rows = [n for row in counts for n in row]
    d, b, g = DIM, quantizer.bits, quantizer.group_size
    if b == 16:
        return {
            "full": sum(2 * n * d * element for n in rows),
            "residual": len(rows) * 2 * residual * d * element,
            "index": 4 * len(rows) * 2,
        }
    quantized = [quantizer.quantizable(n) for n in rows]
    tails = [n - q for n, q in zip(rows, quantized)]
    segments = int(sum(quantized) > 0) + int(sum(tails) > 0) + int(decoded > 0)
    packed = sum(2 * (q + decoded) * d * b // 8 for q in quantized)
    groups = sum(2 * (q + decoded) * d // g for q in quantized)
    return {
        "packed": packed,
        "scales": groups * element,
        "zeros": groups * element,
        "full": sum(2 * t * d * element for t in tails),
        "residual": len(rows) * 2 * residual * d * element,
        "index": 4 * len(rows) * (1 + segments),
    }


@pytest.mark.parametrize("quantizer", [KIVI(bits=4), KIVI(bits=2, group_size=32), FlexGen(bits=8, group_size=128), KIVI(bits=16)])
@pytest.mark.parametrize("ragged", [False, True])
def test_measured_bytes_equal_the_formula_to_the_byte(quantizer, ragged, rng):
    counts = [[130, 71, 200], [64, 5, 199]] if ragged else [[150] * HEADS] * BATCH
    layer = make_layer(rng)
    layer.compress(random_keep(rng, counts), quantizer, torch.float16)
    held = {k: v for k, v in layer.nbytes().items() if v}
    assert held == {k: v for k, v in formula(counts, quantizer).items() if v}


def test_decoded_tokens_are_counted_in_the_residual_then_in_packed_blocks(rng):
    quantizer = KIVI(bits=4, group_size=32)
    counts = [[96] * HEADS] * BATCH
    layer = make_layer(rng)
    layer.compress(random_keep(rng, counts), quantizer, torch.float16)
    from qpruning.cache.context import reset_active_forward, set_active_forward

    token = set_active_forward(object())  # update() of a compressed layer requires a running qpruning forward
    try:
        for _ in range(40):
            layer.update(torch.randn(BATCH, HEADS, 1, DIM, generator=rng), torch.randn(BATCH, HEADS, 1, DIM, generator=rng))
            layer.flush()
    finally:
        reset_active_forward(token)
    held = {k: v for k, v in layer.nbytes().items() if v}
    expected = formula(counts, quantizer, decoded=32, residual=8)
    assert held == {k: v for k, v in expected.items() if v}
    assert layer.tokens_per_row().tolist() == [96 + 40] * (BATCH * HEADS)


def test_outliers_are_counted_with_their_positions(rng):
    layer = make_layer(rng)
    counts = [[128] * HEADS] * BATCH
    layer.compress(random_keep(rng, counts), KIVIOutlier(bits=4), torch.float16)
    held = layer.nbytes()
    numbers = BATCH * HEADS * 128 * DIM
    expected_outliers = 2 * -(-numbers // 100) * (4 + 2)  # keys and values: int32 position + fp16 value
    assert held["outliers"] == expected_outliers


def test_formula_helper_matches_a_measured_row(rng):
    for quantizer in (KIVI(bits=4), FlexGen(bits=2, group_size=32), KIVI(bits=16)):
        layer = make_layer(rng)
        layer.compress(random_keep(rng, [[100] * HEADS] * BATCH), quantizer, torch.float16)
        held = layer.nbytes()
        data = held["packed"] + held["scales"] + held["zeros"] + held["full"]
        assert data == BATCH * HEADS * row_bytes(100, quantizer.bits, quantizer, DIM)


def test_four_times_the_tokens_at_4_bit_cost_at_most_115_percent_of_16_bit(tiny_models):
    model, _ = tiny_models("llama")
    ids = torch.randint(100, 40000, (1, 1200), generator=torch.Generator().manual_seed(0))
    held = {}
    for tokens, bits in ((128, 16), (512, 4)):
        compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=bits, group_size=64), tokens=tokens)
        with compressor.attach(model), torch.no_grad():
            cache = compressor.new_cache(model)
            model(ids, **cache_kwargs(model, cache))
        held[bits] = cache.summary()
        assert held[bits]["kept_tokens"] == tokens
    ratio = held[4]["kv_bytes"] / held[16]["kv_bytes"]
    assert 1.0 < ratio <= 1.15


def test_nominal_budget_reproduces_the_papers_pairs():
    # 1/64 of an 8k cache: 128 tokens at 16 bits, 256 at 8, 512 at 4 (Appendix B).
    quantizer = KIVI()
    assert [tokens_for_budget(1 / 64, 8192, b, quantizer, 128) for b in (16, 8, 4, 2)] == [128, 256, 512, 1024]
    assert tokens_for_budget(1 / 16, 8192, 4, quantizer, 128) == 2048


@pytest.mark.parametrize("quantizer", [KIVI(bits=4), FlexGen(bits=8), KIVIOutlier(bits=4), KIVI(bits=2, group_size=32)])
def test_exact_budget_is_the_largest_token_count_that_fits(quantizer):
    budget, full, d = 1 / 64, 8192, 128
    allowance = budget * 2 * full * d * 2
    tokens = tokens_for_budget(budget, full, quantizer.bits, quantizer, d, mode="exact")

    def cost(n):
        from qpruning.cache.budget import expected_outlier_bytes

        return row_bytes(n, quantizer.bits, quantizer, d) + expected_outlier_bytes(n, quantizer.bits, quantizer, d)

    assert cost(tokens) <= allowance
    assert all(cost(n) > allowance for n in range(tokens + 1, tokens + 200))
    assert tokens < tokens_for_budget(budget, full, quantizer.bits, quantizer, d, mode="nominal")


STORAGE = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4}  # float32: storage_dtype="model" of a float32 model


@pytest.mark.parametrize("storage", list(STORAGE), ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("quantizer", [KIVI(bits=4, group_size=64), KIVIOutlier(bits=2, group_size=32), KIVI(bits=16)])
def test_storage_dtype_holds_scales_zeros_and_16_bit_tokens_and_the_bytes_follow_its_size(quantizer, model_dtype, storage, rng):
    counts = [[130, 71, 200], [64, 5, 199]]
    layer = make_layer(rng, model_dtype)
    layer.compress(random_keep(rng, counts), quantizer, storage)
    token = set_active_forward(object())
    try:
        for _ in range(3):  # three decoded tokens wait in the residual window
            layer.update(*(torch.randn(BATCH, HEADS, 1, DIM, generator=rng).to(model_dtype) for _ in range(2)))
            layer.flush()
    finally:
        reset_active_forward(token)
    for segment in layer.prefix:
        for tensor in (segment.keys, segment.values):
            if segment.quantized:
                assert tensor.scale.dtype == tensor.zero.dtype == storage
                assert tensor.outlier_value is None or tensor.outlier_value.dtype == storage
            else:
                assert tensor.dtype == storage
    assert layer.residual_keys.dtype == layer.residual_values.dtype == storage
    held = layer.nbytes()
    outliers = held.pop("outliers")
    expected = formula(counts, quantizer, residual=3, element=STORAGE[storage])
    assert {k: v for k, v in held.items() if v} == {k: v for k, v in expected.items() if v}
    if quantizer.outliers is not None:  # int32 position + one storage number each
        assert outliers == sum(t.num_outliers for s in layer.prefix if s.quantized for t in (s.keys, s.values)) * (
            4 + STORAGE[storage]
        )


@pytest.mark.parametrize(
    ("model_dtype", "setting", "expected"),
    [
        (torch.float32, None, torch.float16),
        (torch.bfloat16, None, torch.bfloat16),
        (torch.float16, None, torch.float16),
        (torch.bfloat16, "float16", torch.float16),
        (torch.float16, "bfloat16", torch.bfloat16),
        (torch.float32, "bfloat16", torch.bfloat16),
        (torch.float32, "model", torch.float32),
        (torch.bfloat16, "model", torch.bfloat16),
    ],
)
def test_storage_is_the_models_dtype_when_16_bit_unless_storage_dtype_says_otherwise(model_dtype, setting, expected):
    assert KVCompressor(storage_dtype=setting).storage_dtype_for(model_dtype) == expected


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_model_stores_its_cache_in_its_own_dtype_and_reports_the_bytes_of_float16(dtype, tiny_models):
    model, _ = tiny_models("llama", dtype=dtype)
    ids = torch.randint(100, 40000, (1, 300), generator=torch.Generator().manual_seed(0))
    summaries = {}
    for setting in (None, "float16", "bfloat16"):
        compressor = KVCompressor(
            pruner=SnapKV(), quantizer=KIVIOutlier(bits=4, group_size=32), tokens=100, storage_dtype=setting
        )
        with compressor.attach(model), torch.no_grad():
            cache = compressor.new_cache(model)
            model(ids, **cache_kwargs(model, cache))
        quantized, tail = cache.layers[0].prefix
        expected = getattr(torch, setting or dtype)
        assert quantized.keys.scale.dtype == quantized.values.zero.dtype == quantized.keys.outlier_value.dtype == expected
        assert tail.keys.dtype == cache.layers[0].residual_keys.dtype == expected
        summaries[setting] = cache.summary()["bytes"]
    # Both 16-bit formats take two bytes a number: the same bytes whichever holds the cache.
    assert summaries[None] == summaries["float16"] == summaries["bfloat16"]
