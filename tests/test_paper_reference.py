"""Pins the behaviour of tests/paper_reference.py, the slow restatement of the paper's code (issue 14)."""

from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch
import torch.nn.functional as F

from tests import paper_reference as ref


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _qkv(batch=2, q_heads=8, kv_heads=2, seq=200, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, seq, d, generator=g)
    k = torch.randn(batch, kv_heads, seq, d, generator=g)
    return q, k


def _assert_well_formed(kept: torch.Tensor, seq: int, count: int, window: int) -> None:
    assert kept.dtype == torch.long
    assert kept.shape[-1] == count
    assert torch.all(kept[..., 1:] > kept[..., :-1]), "sorted, no repeats"
    assert int(kept.min()) >= 0 and int(kept.max()) < seq
    recent = torch.arange(seq - window, seq)
    assert torch.equal(kept[..., count - window :], recent.expand_as(kept[..., count - window :]))


def test_expand_kv_heads_gives_each_query_head_its_group_kv_head():
    _, k = _qkv(q_heads=8, kv_heads=2)
    expanded = ref.expand_kv_heads(k, 8)
    assert torch.equal(expanded, torch.repeat_interleave(k, 4, dim=1))
    with pytest.raises(ValueError, match="multiple"):
        ref.expand_kv_heads(k, 7)


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("kernel", [1, 5, 7])
def test_pool_votes_equals_torch_pooling_with_half_kernel_padding(pooling, kernel):
    votes = torch.rand(2, 3, 41)
    flat = votes.reshape(6, 1, 41)
    pool = F.max_pool1d if pooling == "max" else F.avg_pool1d
    expected = pool(flat, kernel, stride=1, padding=kernel // 2).reshape(2, 3, 41)
    torch.testing.assert_close(ref.pool_votes(votes, kernel, pooling), expected)


@pytest.mark.parametrize("window", [8, 32])
def test_snapkv_keeps_budget_per_query_head_window_included(window):
    q, k = _qkv()
    kept = ref.snapkv_keep(q, k, budget=64, window=window)
    assert kept.shape[:2] == (2, 8)
    _assert_well_formed(kept, 200, 64, window)


def test_snapkv_selects_per_query_head_not_per_kv_head():
    q, k = _qkv(batch=1, q_heads=4, kv_heads=1, seq=120)
    kept = ref.snapkv_keep(q, k, budget=40, window=8)
    # Query heads of one KV head choose different tokens: the cache must hold one row per query head.
    assert not torch.equal(kept[0, 0], kept[0, 1])
    for h in range(4):
        alone = ref.snapkv_keep(q[:, h : h + 1], k, budget=40, window=8)
        assert torch.equal(kept[:, h], alone[:, 0])


def test_snapkv_keeps_a_token_the_window_attends_to_and_its_pooled_neighbours():
    q, k = _qkv(batch=1, q_heads=2, kv_heads=1, seq=150, d=16)
    k[0, 0, 40] = 0
    k[0, 0, 40, 0] = 30.0
    q[0, :, -8:] = 0
    q[0, :, -8:, 0] = 1.0  # the window queries look at token 40 only
    kept = ref.snapkv_keep(q, k, budget=16, window=8, kernel_size=7, pooling="max")
    for neighbour in range(37, 44):  # max pooling spreads token 40's vote over +-3 positions
        assert bool((kept == neighbour).any(dim=-1).all())


def test_snapkv_window_votes_are_causal_inside_the_window():
    q, k = _qkv(batch=1, q_heads=1, kv_heads=1, seq=64)
    k2 = k.clone()
    k2[..., -1, :] = k2[..., -1, :] * 50  # a different last key
    # Every window query but the last sees the same keys either way; the last one is zero, so its softmax row is
    # uniform over what it sees. Causal masking inside the window: the votes cannot move.
    q[..., -1, :] = 0
    before = ref.snapkv_scores(q, k, window=8, kernel_size=1, pooling="max")
    torch.testing.assert_close(ref.snapkv_scores(q, k2, window=8, kernel_size=1, pooling="max"), before)
    # The same change seen by an earlier query (no mask) would move them: the test can fail.
    q2 = q.clone()
    q2[..., -1, :] = q[..., -2, :]
    moved = ref.snapkv_scores(q2, k2, 8, 1, "max") - ref.snapkv_scores(q2, k, 8, 1, "max")
    assert float(moved.abs().max()) > 1e-5


def test_short_prompts_are_kept_whole():
    q, k = _qkv(seq=50)
    for kept in (
        ref.snapkv_keep(q, k, budget=64, window=8),
        ref.h2o_keep(q, k, budget=64, window=8),
        ref.streamingllm_keep(2, 8, 50, budget=64, window=32),
        ref.pyramidkv_keep(q, k, budget=64, window=8, layer_idx=0, num_layers=4),
    ):
        assert torch.equal(kept, torch.arange(50).expand(2, 8, 50))


def test_budget_must_exceed_window():
    q, k = _qkv()
    with pytest.raises(ValueError, match="exceed"):
        ref.snapkv_keep(q, k, budget=8, window=8)


def test_h2o_mask_is_non_causal_except_in_the_last_window_block():
    allowed = ref.h2o_allowed(20, 4)
    assert bool(allowed[:16].all()), "queries before the window see every key, later ones too"
    assert torch.equal(allowed[16:, 16:], torch.ones(4, 4, dtype=torch.bool).tril())
    assert bool(allowed[16:, :16].all())


def test_h2o_counts_attention_from_earlier_queries_to_later_tokens():
    q, k = _qkv(batch=1, q_heads=1, kv_heads=1, seq=100, d=16)
    k[0, 0, 80] = 0
    k[0, 0, 80, 0] = 40.0
    q[0, 0, :10] = 0
    q[0, 0, :10, 0] = 1.0  # queries 0..9 (before token 80) attend to it
    scores = ref.h2o_scores(q, k, window=8)
    assert scores[0, 0, 80] > 9.0  # nearly all of the ten early queries' mass
    kept = ref.h2o_keep(q, k, budget=20, window=8)
    assert bool((kept == 80).any())


def test_h2o_keeps_budget_per_query_head():
    q, k = _qkv()
    kept = ref.h2o_keep(q, k, budget=50, window=8)
    _assert_well_formed(kept, 200, 50, 8)
    assert not torch.equal(kept[:, 0], kept[:, 1])


def test_streamingllm_longbench_setting_is_four_sinks_and_recent_tokens():
    budget = 64
    kept = ref.streamingllm_keep(1, 2, 300, budget=budget, window=budget - 4)
    expected = torch.tensor(list(range(4)) + list(range(300 - 60, 300)))
    assert torch.equal(kept[0, 0], expected) and torch.equal(kept[0, 1], expected)


def test_streamingllm_needle_setting_gives_the_budget_to_the_first_tokens():
    kept = ref.streamingllm_keep(1, 1, 300, budget=96, window=32)
    expected = torch.tensor(list(range(64)) + list(range(268, 300)))
    assert torch.equal(kept[0, 0], expected)


def test_pyramid_layer_tokens_reproduce_the_integer_steps_of_the_issue():
    # 256 selected tokens on average, window 32, a 524-token prompt: the bottom layer is capped at 524 - 32 = 492,
    # the top one raised to 512 - 492 = 20, and the integer step (472 // 3 = 157) leaves the top layer 21.
    tokens = ref.pyramidkv_layer_tokens(seq=524, budget=288, window=32, num_layers=4)
    assert [t - 32 for t in tokens] == [492, 335, 178, 21]


@pytest.mark.parametrize("seq,budget,window,layers", [(4000, 136, 8, 32), (8000, 2056, 8, 32), (1024, 72, 8, 30),
                                                      (600, 264, 8, 24), (9000, 512, 8, 16)])
def test_pyramid_layer_tokens_fall_by_one_integer_step_and_never_sum_below_uniform(seq, budget, window, layers):
    tokens = ref.pyramidkv_layer_tokens(seq, budget, window, layers)
    steps = {tokens[i] - tokens[i + 1] for i in range(layers - 1)}
    assert len(steps) == 1 and next(iter(steps)) >= 0
    assert sum(tokens) >= layers * budget
    # The floor of the step loses under one token per step below the bottom layer.
    assert sum(tokens) - layers * budget < layers * (layers - 1) / 2
    assert tokens[0] - window <= seq - window
    assert tokens[-1] - window >= (budget - window) // 20


def test_pyramid_falls_back_to_uniform_when_the_prompt_is_under_twice_the_selection():
    assert ref.pyramidkv_layer_tokens(seq=300, budget=200, window=8, num_layers=4) == [200] * 4
    assert ref.pyramidkv_layer_tokens(seq=150, budget=200, window=8, num_layers=4) == [150] * 4
    with pytest.raises(ValueError, match="2 layers"):
        ref.pyramidkv_layer_tokens(seq=300, budget=20, window=8, num_layers=1)


def test_pyramid_keep_uses_the_layer_count_with_snapkv_scores():
    q, k = _qkv(seq=400)
    tokens = ref.pyramidkv_layer_tokens(400, 72, 8, 4)
    for layer in range(4):
        kept = ref.pyramidkv_keep(q, k, budget=72, window=8, layer_idx=layer, num_layers=4)
        _assert_well_formed(kept, 400, tokens[layer], 8)
    # Same count as SnapKV: the same tokens (the selection differs only in how many are taken).
    snap = ref.snapkv_keep(q, k, budget=tokens[2], window=8)
    assert torch.equal(ref.pyramidkv_keep(q, k, 72, 8, layer_idx=2, num_layers=4), snap)


# ------------------------------------------------------------------------------------------------ quantization
needs_hqq = pytest.mark.skipif(importlib.util.find_spec("hqq") is None, reason="the hqq package is not installed")


def _distinct_per_group(x: torch.Tensor, members: torch.Tensor) -> int:
    groups = x.flatten()[members]
    return max(len(torch.unique(row)) for row in groups)


@pytest.mark.parametrize("axis", [0, 1])
def test_hqq_group_members_partition_the_tensor(axis):
    members = ref.hqq_group_members((1, 4, 32, 64), 64, axis)
    assert members.shape == (4 * 32 * 64 // 64, 64)
    assert torch.equal(members.flatten().sort().values, torch.arange(4 * 32 * 64))
    if axis == 1:
        assert torch.equal(members[5], torch.arange(5 * 64, 6 * 64)), "one token's channels"
    else:
        stride = 4 * 32 * 64 // 64
        assert torch.equal(members[5], 5 + stride * torch.arange(64)), "strided through heads and tokens"


@needs_hqq
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [0, 1])
def test_transformers_hqq_cache_groups_as_described(bits, axis):
    x = torch.randn(1, 4, 48, 64)
    out = ref.hqq_cache_roundtrip(x, bits, 64, axis, optimize=None)  # transformers' own layer
    assert out.shape == x.shape and out.dtype == x.dtype
    # Every group holds at most 2^bits levels: the grouping of hqq_group_members is the cache's.
    assert _distinct_per_group(out, ref.hqq_group_members(tuple(x.shape), 64, axis)) <= 2**bits
    other = ref.hqq_group_members(tuple(x.shape), 64, 1 - axis)
    if bits < 8:
        assert _distinct_per_group(out, other) > 2**bits


@needs_hqq
@pytest.mark.parametrize("bits,bound", [(2, 0.5), (4, 0.02), (8, 1e-4)])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("optimize", [False, True, None])
def test_hqq_cache_roundtrip_error_is_bounded(bits, bound, axis, optimize):
    x = torch.randn(2, 4, 64, 64)
    out = ref.hqq_cache_roundtrip(x, bits, 64, axis, optimize)
    rel = float((out - x).pow(2).mean() / x.pow(2).mean())
    assert 0 < rel < bound


@needs_hqq
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [0, 1])
def test_own_minmax_equals_hqq_without_its_optimizer(bits, axis):
    from hqq.core.quantize import Quantizer

    x = torch.randn(1, 4, 32, 64)
    codes, meta = Quantizer.quantize(x, nbits=bits, group_size=64, axis=axis, optimize=False, device="cpu",
                                     compute_dtype=torch.float32)
    meta["compute_dtype"] = torch.float32
    expected = Quantizer.dequantize(codes, meta)
    torch.testing.assert_close(ref.hqq_minmax_roundtrip(x, bits, 64, axis), expected, atol=1e-5, rtol=1e-5)


@needs_hqq
@pytest.mark.parametrize("axis", [0, 1])
def test_the_direct_call_is_what_transformers_hqq_layer_computes(axis):
    from hqq.core.quantize import Quantizer

    installed_default = inspect.signature(Quantizer.quantize).parameters["optimize"].default
    x = torch.randn(1, 4, 64, 64)
    through_layer = ref.hqq_cache_roundtrip(x, 2, 64, axis, optimize=None)
    direct = ref.hqq_cache_roundtrip(x, 2, 64, axis, optimize=installed_default)
    torch.testing.assert_close(through_layer, direct, rtol=0, atol=0)


@needs_hqq
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_the_paper_era_cache_is_plain_minmax_over_hqq_groups(bits):
    # hqq up to 0.2.6 quantized with optimize=False unless told otherwise, and the cache never tells it.
    x = torch.randn(1, 4, 64, 64)
    for axis in (0, 1):
        torch.testing.assert_close(ref.hqq_cache_roundtrip(x, bits, 64, axis, optimize=False),
                                   ref.hqq_minmax_roundtrip(x, bits, 64, axis), atol=1e-5, rtol=1e-5)


@needs_hqq
def test_hqqs_optimizer_changes_the_values_and_lowers_the_mean_abs_error():
    x = torch.randn(1, 4, 64, 64)
    optimized = ref.hqq_cache_roundtrip(x, 2, 64, 1, optimize=True)
    plain = ref.hqq_cache_roundtrip(x, 2, 64, 1, optimize=False)
    assert not torch.allclose(optimized, plain, atol=1e-4)
    assert float((optimized - x).abs().mean()) < float((plain - x).abs().mean())


@needs_hqq
def test_paper_kivi_and_flexgen_differ_only_in_the_key_axis():
    k = torch.randn(1, 8, 32, 64)
    v = torch.randn(1, 8, 32, 64)
    kivi_k, kivi_v = ref.hqq_cache_kv_roundtrip(k, v, 4, 64, axis_key=1, axis_value=0)
    flex_k, flex_v = ref.hqq_cache_kv_roundtrip(k, v, 4, 64, axis_key=0, axis_value=0)
    torch.testing.assert_close(kivi_v, flex_v, rtol=0, atol=0)
    assert not torch.allclose(kivi_k, flex_k)


@needs_hqq
@pytest.mark.parametrize("axis", [0, 1])
def test_outlier_cache_restores_large_numbers_exactly(axis):
    x = torch.randn(1, 2, 32, 64) * 3
    out = ref.hqq_outlier_roundtrip(x, 2, 64, axis, threshold=6.0)
    big = x.abs() > 6.0
    assert bool(big.any())
    assert torch.equal(out[big], x[big])
    inliers = ref.hqq_cache_roundtrip(x.masked_fill(big, 0), 2, 64, axis)
    torch.testing.assert_close(out[~big], inliers[~big], rtol=0, atol=0)


def test_agree_ties_aside_accepts_another_tie_break_and_nothing_else():
    q, k = _qkv(batch=1, q_heads=4, kv_heads=4, seq=300)
    scores = ref.snapkv_scores(q, k, window=8, kernel_size=7, pooling="max")
    kept = ref.snapkv_keep(q, k, budget=40, window=8)
    # The same selection with ties broken towards later positions: topk over the reversed scores.
    flipped = scores.flip(-1).topk(32, dim=-1).indices
    other = torch.cat([299 - 8 - flipped, torch.arange(292, 300).expand(1, 4, 8)], dim=-1).sort(-1).values
    assert ref.agree_ties_aside(other, kept, scores)
    assert not torch.equal(other, kept), "max pooling leaves ties at the cut-off on this seed"
    worse = kept.clone()
    best = scores[0, 0].argmax()
    worse[0, 0][worse[0, 0] == best] = int(scores[0, 0].argmin())
    assert not ref.agree_ties_aside(worse.sort(-1).values, kept, scores)
