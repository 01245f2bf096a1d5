"""Precision per token (``quant.tiers``): the tiers' sizes and ranks equal a loop's, a tiered layer stores each tier
at its bits with the bytes the formula gives, per-token groups make a tiering at one precision the uniform cache
itself, the budget buys tokens at the tiers' mean bits, and what cannot run with tiers is refused in one line."""

import math

import pytest
import torch

from qpruning import KIVI, FlexGen, KVCompressor, NoPruner, SnapKV
from qpruning.backends.reference import reference_attention
from qpruning.cache import get_quantizer
from qpruning.cache.budget import LayerOverride, row_bytes, tiered_row_bytes, tokens_for_budget
from qpruning.cache.context import reset_active_forward, set_active_forward
from qpruning.cache.layer import CompressedLayer
from qpruning.cache.quantized import QuantizedTensor
from qpruning.cache.tiers import Tier, mean_bits, split_tiers, tier_counts, tier_counts_of
from qpruning.compressor import ModelGeometry
from qpruning.errors import ConfigError
from qpruning.transformers_api import cache_kwargs

BATCH, HEADS, SEQ, DIM = 2, 3, 200, 64
THREE = [[0.1, 8], [0.4, 4], [0.5, 2]]


def test_tiers_are_parsed_and_refused_in_one_line():
    quantizer = get_quantizer("kivi", bits=4, tiers=THREE)
    assert quantizer.tier_plan == (Tier(0.1, 8), Tier(0.4, 4), Tier(0.5, 2))
    assert quantizer.tiers_label == "0.1x8+0.4x4+0.5x2" and get_quantizer("kivi").tiers_label is None
    assert mean_bits(quantizer.tier_plan) == pytest.approx(3.4)
    assert get_quantizer("kivi", tiers=[[1.0, 8.0]]).tier_plan == (Tier(1.0, 8),)  # a YAML 8.0 is 8
    for tiers, message in [
        ([[0.5, 8], [0.4, 4]], "the shares sum to 0.9, not 1"),
        ([[0.5, 8], [0.5, 3]], r"quant.tiers\[1\] bits=3 is not supported"),
        ([[0.0, 8], [1.0, 4]], r"quant.tiers\[0\] share=0.0 is out of range"),
        ([[0.5, 8, 1], [0.5, 4]], r"quant.tiers\[0\]=\[0.5, 8, 1\] is not a \[share, bits\] pair"),
        ("8:0.5", "is not a list of"),
        ([], "is not a list of"),
    ]:
        with pytest.raises(ConfigError, match=message) as error:
            get_quantizer("kivi", tiers=tiers)
        assert "\n" not in str(error.value) and "e.g. quant.tiers=[[0.1,8],[0.4,4],[0.5,2]]" in str(error.value)


def test_tier_counts_split_every_row_within_one_token_of_its_shares():
    tiers = get_quantizer("kivi", tiers=THREE).tier_plan
    assert tier_counts_of(10, tiers) == [1, 4, 5] and tier_counts_of(7, tiers) == [0, 3, 4]
    lengths = torch.arange(0, 500)
    counts = tier_counts(lengths, tiers)
    assert torch.equal(sum(counts), lengths)
    for count, tier in zip(counts, tiers):
        assert ((count - lengths * tier.share).abs() < 1 + 1e-9).all() and (count >= 0).all()


def reference_split(keep, scores, tiers):
    """Per row: the kept positions ranked by score (higher first, then position), cut at the tier counts."""
    masks = [torch.zeros_like(keep) for _ in tiers]
    for b in range(keep.shape[0]):
        for h in range(keep.shape[1]):
            kept = [j for j in range(keep.shape[2]) if keep[b, h, j]]
            ranked = sorted(kept, key=lambda j: (-float(scores[b, h, j]), j))
            start = 0
            for mask, count in zip(masks, tier_counts_of(len(kept), tiers)):
                for j in ranked[start:start + count]:
                    mask[b, h, j] = True
                start += count
    return masks


def test_split_tiers_ranks_each_rows_kept_tokens_by_score_as_a_loop_does(rng):
    tiers = get_quantizer("kivi", tiers=THREE).tier_plan
    keep = torch.rand(BATCH, HEADS, SEQ, generator=rng) < 0.4
    keep[0, 1] = False  # a row that keeps nothing
    scores = torch.randn(BATCH, HEADS, SEQ, generator=rng)
    scores[..., -5:] = math.inf  # an always-kept window: first tier
    scores[1, 2, :50] = 0.5  # ties: position order
    keep[..., -5:] = True
    found = split_tiers(keep, scores, tiers)
    expected = reference_split(keep, scores, tiers)
    for a, b in zip(found, expected):
        assert torch.equal(a, b)
    assert torch.equal(sum(m.long() for m in found), keep.long())
    assert all(found[0][b, h, -5:].all() for b in range(BATCH) for h in (0, 2))  # 5 of >= 10% of the kept


def tiered_layer(rng, quantizer, keep, scores, tiers, dtype=torch.float32):
    layer = CompressedLayer()
    layer.update(torch.randn(BATCH, HEADS, SEQ, DIM, generator=rng), torch.randn(BATCH, HEADS, SEQ, DIM, generator=rng))
    parts = None
    if tiers is not None:
        parts = [(mask, quantizer.untiered(t.bits)) for mask, t in zip(split_tiers(keep, scores, tiers), tiers)]
    layer.compress(keep, quantizer, dtype, reference_attention, tiers=parts)
    return layer


def test_a_tiered_layer_stores_each_tier_at_its_bits_with_the_formulas_bytes(rng):
    quantizer = KIVI(bits=4, group_size=32, tiers=[[0.25, 8], [0.75, 2]])
    keep = torch.zeros(BATCH, HEADS, SEQ, dtype=torch.bool)
    keep[..., 40:168] = True  # 128 per row: 32 at 8 bits, 96 at 2 bits (whole groups of 32)
    scores = torch.randn(BATCH, HEADS, SEQ, generator=rng)
    layer = tiered_layer(rng, quantizer, keep, scores, quantizer.tier_plan, torch.float16)  # 16-bit scales
    by_bits = {}
    for segment in layer.prefix:
        assert isinstance(segment.keys, QuantizedTensor)
        by_bits[segment.keys.bits] = by_bits.get(segment.keys.bits, 0) + segment.num_tokens
    assert by_bits == {8: 32 * BATCH * HEADS, 2: 96 * BATCH * HEADS}
    held = layer.nbytes()
    expected = BATCH * HEADS * (row_bytes(32, 8, quantizer, DIM) + row_bytes(96, 2, quantizer, DIM))
    assert held["packed"] + held["scales"] + held["zeros"] + held["full"] == expected
    assert expected == BATCH * HEADS * tiered_row_bytes(128, quantizer, DIM)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_token_groups_make_a_tiering_at_one_precision_the_uniform_cache(bits, rng):
    """FlexGen groups each token alone, so storing two tiers at the same bits changes only the order of the tokens,
    which attention does not see."""
    keep = torch.rand(BATCH, HEADS, SEQ, generator=rng) < 0.5
    scores = torch.randn(BATCH, HEADS, SEQ, generator=rng)
    state = rng.get_state()
    uniform = tiered_layer(rng, FlexGen(bits=bits), keep, scores, None)
    rng.set_state(state)
    tiered_quantizer = FlexGen(bits=bits, tiers=[[0.3, bits], [0.7, bits]])
    tiered = tiered_layer(rng, tiered_quantizer, keep, scores, tiered_quantizer.tier_plan)
    query = torch.randn(BATCH, HEADS * 2, 1, DIM, generator=rng)
    token = set_active_forward(object())
    try:
        expected = uniform.attend(query, DIM**-0.5)
        found = tiered.attend(query, DIM**-0.5)
    finally:
        reset_active_forward(token)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)
    assert tiered.nbytes()["packed"] == uniform.nbytes()["packed"]
    assert len(tiered.prefix) == 2 and len(uniform.prefix) == 1


def test_the_budget_buys_tokens_at_the_tiers_mean_bits():
    tiered = KIVI(bits=4, tiers=THREE)
    assert tokens_for_budget(1 / 16, 8192, 4, tiered, 64) == math.floor(8192 / 16 * 16 / 3.4)
    exact = tokens_for_budget(1 / 16, 8192, 4, tiered, 64, "exact")
    allowance = 2 * 8192 * 64 * 2 / 16
    assert tiered_row_bytes(exact, tiered, 64) <= allowance < tiered_row_bytes(exact + 1, tiered, 64)
    geometry = ModelGeometry("llama", 4, 2, 4, 64, 8192)
    plans = KVCompressor(pruner=SnapKV(), quantizer=tiered, budget=1 / 16).plan(geometry)
    assert {p.tokens for p in plans} == {2409} and {p.bits for p in plans} == {4}


def test_what_tiers_cannot_run_with_is_refused_in_one_line():
    tiered = KIVI(bits=4, tiers=THREE)
    with pytest.raises(ConfigError, match="pruner=none scores none"):
        KVCompressor(pruner=NoPruner(), quantizer=tiered)
    with pytest.raises(ConfigError, match="layer-wise bits, not both"):
        KVCompressor(pruner=SnapKV(), quantizer=tiered, budget=1 / 16, layers=[LayerOverride("0-1", bits=8)])
    with pytest.raises(ConfigError, match="quant.tiers has no compat=paper counterpart"):
        KVCompressor(pruner=SnapKV(), quantizer=tiered, budget=1 / 16, compat="paper")


def test_through_a_model_every_layer_keeps_its_tiers_and_decodes(tiny_models):
    model, _ = tiny_models("llama")
    quantizer = KIVI(bits=4, group_size=32, tiers=[[0.25, 8], [0.75, 2]])
    compressor = KVCompressor(pruner=SnapKV(window=8), quantizer=quantizer, tokens=128)
    ids = torch.randint(100, 40000, (2, 300), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), compressor.attach(model):
        cache = compressor.new_cache(model)
        out = model.generate(ids, max_new_tokens=40, do_sample=False, **cache_kwargs(model, cache))
    assert out.shape[1] == 340 and cache.prefill_result().kept_tokens == 128
    for layer in cache.layers:
        bits = sorted(s.keys.bits for s in layer.prefix if isinstance(s.keys, QuantizedTensor))
        assert bits == [2, 8] and sum(s.num_tokens for s in layer.prefix) == 128 * layer.rows
        assert layer.decoded is not None and layer.decoded.keys.bits == 4  # decoded tokens at bits=4
    uniform = KVCompressor(pruner=SnapKV(window=8), quantizer=KIVI(bits=4, group_size=32), tokens=128)
    with torch.no_grad(), uniform.attach(model):
        plain = uniform.new_cache(model)
        model(ids, **cache_kwargs(model, plain), logits_to_keep=1)
    for tiered_layer_, plain_layer in zip(cache.layers, plain.layers):
        assert torch.equal(tiered_layer_.kept_positions(), plain_layer.kept_positions())  # tiers do not change what is kept


def test_the_always_kept_window_is_in_the_first_tier_whatever_the_pruner_scores_it(rng):
    """StreamingLLM scores recent tokens lowest (its score is minus the position); the window it always keeps must
    still be stored in the first tier (here 16 bits: the window's keys exactly as they came)."""
    from qpruning import StreamingLLM
    from qpruning.cache.cache import QPrunedCache

    geometry = ModelGeometry("llama", 1, 2, 4, DIM, 4096)
    quantizer = FlexGen(bits=4, tiers=[[0.25, 16], [0.75, 4]])
    compressor = KVCompressor(pruner=StreamingLLM(window=8), quantizer=quantizer, tokens=32)
    cache = QPrunedCache(1, plans=compressor.plan(geometry))
    query, key = torch.randn(1, 4, SEQ, DIM, generator=rng), torch.randn(1, 2, SEQ, DIM, generator=rng)
    cache.layers[0].update(key, key.clone())
    compressor.compress_layer(cache, 0, query, key, key.clone(), DIM**-0.5)
    plain = [s for s in cache.layers[0].prefix if not isinstance(s.keys, QuantizedTensor)]
    assert len(plain) == 1 and plain[0].num_tokens == 2 * 8
    stored = plain[0].keys.view(2, 8, DIM).float()
    torch.testing.assert_close(stored, key[0, :, -8:].to(stored.dtype).float(), rtol=1e-3, atol=1e-3)
