"""Each pruner keeps what a slow, obviously correct re-implementation keeps, head by head."""

import logging
import math

import pytest
import torch

from qpruning.pruners import H2O, AdaKV, PyramidKV, SnapKV, StreamingLLM, get_pruner, select_tokens

BATCH, Q_HEADS, KV_HEADS, SEQ, DIM = 2, 6, 2, 80, 16
SCALE = DIM**-0.5


def random_qk(rng):
    query = torch.randn(BATCH, Q_HEADS, SEQ, DIM, generator=rng)
    key = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    return query, key


def causal_probs(q_vec, key_rows, position):
    """Softmax of one query over the keys at positions 0..position, as a list."""
    logits = [float(q_vec @ key_rows[j]) * SCALE for j in range(position + 1)]
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def reference_keep(score_fn, budget, window):
    """Per-(batch, kv head) reference scores of the tokens before the window."""
    return [[score_fn(b, h) for h in range(KV_HEADS)] for b in range(BATCH)]


def assert_selects(pruner, query, key, budget, reference):
    """The pruner's scores equal the reference's, and its keep mask is a top-``budget`` choice under them
    (ties, which max pooling makes common, may be broken either way)."""
    window = pruner.window
    scores = pruner.score(query, key, None, SCALE)
    keep = select_tokens(scores, pruner.allocate(scores, budget, None), None, window)
    for b in range(BATCH):
        for h in range(KV_HEADS):
            expected = torch.tensor(reference[b][h], dtype=torch.float32)
            ours = scores[b, h, : SEQ - window]
            torch.testing.assert_close(ours, expected[: SEQ - window], rtol=1e-5, atol=1e-6)
            assert keep[b, h, SEQ - window :].all()
            assert int(keep[b, h].sum()) == budget
            kept, dropped = ours[keep[b, h, : SEQ - window]], ours[~keep[b, h, : SEQ - window]]
            assert kept.min() >= dropped.max()


def run(pruner, query, key, budget):
    scores = pruner.score(query, key, None, SCALE)
    counts = pruner.allocate(scores, budget, None)
    return select_tokens(scores, counts, None, pruner.window)


def group_of(h):
    group = Q_HEADS // KV_HEADS
    return range(h * group, (h + 1) * group)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_snapkv_matches_a_loop_over_window_queries_and_heads(pooling, rng):
    query, key = random_qk(rng)
    pruner = SnapKV(window=8, kernel_size=5, pooling=pooling)

    def score(b, h):
        per_head = []
        for qh in group_of(h):
            votes = [0.0] * SEQ
            for i in range(SEQ - 8, SEQ):
                for j, p in enumerate(causal_probs(query[b, qh, i], key[b, h], i)):
                    votes[j] += p
            pooled = []
            prefix = SEQ - 8  # votes of the window's own tokens are not pooled
            for j in range(prefix):
                hood = [votes[t] for t in range(j - 2, j + 3) if 0 <= t < prefix]
                pooled.append(max(hood) if pooling == "max" else sum(hood) / 5)
            per_head.append(pooled)
        return [sum(col) / len(col) for col in zip(*per_head)]

    assert_selects(pruner, query, key, 30, reference_keep(score, 30, 8))


def test_h2o_matches_attention_accumulated_over_every_prompt_query(rng, monkeypatch):
    query, key = random_qk(rng)
    # Force several query chunks so that the chunked accumulation is what is checked.
    monkeypatch.setattr("qpruning.pruners.base.SCORE_BLOCK_NUMBERS", BATCH * Q_HEADS * SEQ * 7)
    pruner = H2O(window=4)

    def score(b, h):
        totals = [0.0] * SEQ
        for qh in group_of(h):
            for i in range(SEQ):
                for j, p in enumerate(causal_probs(query[b, qh, i], key[b, h], i)):
                    totals[j] += p / len(group_of(h))
        return totals

    assert_selects(pruner, query, key, 25, reference_keep(score, 25, 4))


def test_streamingllm_keeps_the_first_tokens_and_the_window(rng):
    query, key = random_qk(rng)
    keep = run(StreamingLLM(window=8), query, key, 20)
    expected = torch.zeros(SEQ, dtype=torch.bool)
    expected[:12] = True
    expected[-8:] = True
    assert torch.equal(keep, expected.expand(BATCH, KV_HEADS, SEQ))


def test_streamingllm_with_sinks_keeps_sinks_and_the_most_recent_tokens(rng):
    query, key = random_qk(rng)
    keep = run(StreamingLLM(window=8, sinks=4), query, key, 20)
    expected = torch.zeros(SEQ, dtype=torch.bool)
    expected[:4] = True
    expected[-16:] = True
    assert torch.equal(keep, expected.expand(BATCH, KV_HEADS, SEQ))


def test_kv_heads_choose_their_own_tokens(rng):
    query, key = random_qk(rng)
    keep = run(SnapKV(window=4), query, key, 16)
    assert keep.sum(-1).eq(16).all()
    assert not torch.equal(keep[:, 0], keep[:, 1])


def test_padding_is_never_kept_and_a_padded_row_selects_as_if_unpadded(rng):
    pad = 10
    query, key = random_qk(rng)
    valid = torch.ones(BATCH, SEQ, dtype=torch.bool)
    valid[1, :pad] = False
    pruner = SnapKV(window=8)
    scores = pruner.score(query, key, valid, SCALE)
    keep = select_tokens(scores, pruner.allocate(scores, 30, valid), valid, pruner.window)
    assert not keep[1, :, :pad].any()
    alone = run(pruner, query[1:, :, pad:], key[1:, :, pad:], 30)
    assert torch.equal(keep[1, :, pad:], alone[0])


def test_a_row_shorter_than_the_budget_keeps_all_its_real_tokens(rng):
    query, key = random_qk(rng)
    valid = torch.ones(BATCH, SEQ, dtype=torch.bool)
    valid[0, :70] = False  # 10 real tokens, budget 30
    pruner = SnapKV(window=8)
    scores = pruner.score(query, key, valid, SCALE)
    keep = select_tokens(scores, pruner.allocate(scores, 30, valid), valid, pruner.window)
    assert torch.equal(keep[0], valid[0].expand(KV_HEADS, SEQ))
    assert keep[1].sum(-1).eq(30).all()


def test_pyramid_budgets_fall_linearly_and_sum_to_the_uniform_total():
    pruner = PyramidKV(window=8, beta=20)
    layers, budget, seq = 32, 520, 8000
    budgets = pruner.layer_tokens([budget] * layers, seq)
    selected = budget - 8
    assert sum(budgets) == layers * budget
    assert budgets[0] - 8 in (2 * selected - selected // 20, 2 * selected - selected // 20 + 1)
    assert abs(budgets[-1] - 8 - selected // 20) <= 1
    steps = [budgets[i] - budgets[i + 1] for i in range(layers - 1)]
    assert all(s >= 0 for s in steps) and max(steps) - min(steps) <= 1
    assert pruner.last_schedule["mode"] == "pyramid"


def test_pyramid_caps_the_bottom_layer_at_the_prompt_and_keeps_the_total():
    pruner = PyramidKV(window=8, beta=20)
    # 100 selected tokens per layer: the bottom layer would take 195 + 8, more than a 201-token prompt has.
    budgets = pruner.layer_tokens([108] * 10, 201)
    assert pruner.last_schedule["mode"] == "redistributed"
    assert budgets[0] == 201 and sum(budgets) == 1080


def test_short_prompt_falls_back_to_uniform_budgets_and_says_so(caplog):
    pruner = PyramidKV(window=8)
    with caplog.at_level(logging.INFO, logger="qpruning.pruners.pyramidkv"):
        budgets = pruner.layer_tokens([300] * 10, 500)
    assert budgets == [300] * 10
    assert pruner.last_schedule["mode"] == "uniform-fallback"
    assert "uniform layer budgets" in caplog.text
    explicit = PyramidKV(window=8, short_prompt="pyramid").layer_tokens([300] * 10, 500)
    assert sum(explicit) == 3000 and explicit[0] > explicit[-1]


def test_unknown_pruner_lists_the_known_ones():
    with pytest.raises(ValueError, match="allowed: none, streamingllm, h2o, snapkv, pyramidkv"):
        get_pruner("oracle")


def test_bad_pruner_parameters_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        SnapKV(kernel_size=4)
    with pytest.raises(ValueError, match="max or avg"):
        SnapKV(pooling="median")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize(
    "pruner", [StreamingLLM(window=8), H2O(window=4), SnapKV(window=8), PyramidKV(window=8), AdaKV(window=8)],
    ids=lambda p: p.name,
)
def test_selection_is_computed_in_float32_whatever_the_models_dtype(pruner, dtype, rng):
    """A half-precision model hands its pruner half-precision queries and keys; the scores come out in float32 and
    equal those computed from the same numbers in float32, so the choice is the one a float32 pass would make."""
    query, key = (t.to(dtype) for t in random_qk(rng))
    valid = torch.ones(BATCH, SEQ, dtype=torch.bool)
    valid[1, :10] = False
    for key_valid in (None, valid):
        scores = pruner.score(query, key, key_valid, SCALE)
        assert scores.dtype == torch.float32
        upcast = pruner.score(query.float(), key.float(), key_valid, SCALE)
        assert torch.equal(scores, upcast)
        counts = pruner.allocate(scores, 30, key_valid)
        assert torch.equal(counts, pruner.allocate(upcast, 30, key_valid))
        keep = select_tokens(scores, counts, key_valid, pruner.window)
        assert torch.equal(keep, select_tokens(upcast, counts, key_valid, pruner.window))
