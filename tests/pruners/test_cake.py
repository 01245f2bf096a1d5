"""CAKE keeps, head by head, the window and then the tokens of largest mean + gamma x variance of the window's
attention (average-pooled), as a plain loop does; a layer's preference is its window attention's entropy and variance
as a loop computes them; the layers' budgets follow the preferences and keep the total; through a model the layers
hold different budgets, exactly those a reference pipeline (every layer's prefill, its preference, the spread, then
each layer's choice) gives, whichever path (in-line prefill, shared prefill, optimize's calibration cache) built it."""

import math

import pytest
import torch

from qpruning import KIVI, KVCompressor
from qpruning.errors import ConfigError
from qpruning.optimize.calibration import RecordedPrompt, build_cache, record_prefill
from qpruning.prefill import SharedPrefill
from qpruning.pruners import CAKE, get_pruner
from qpruning.transformers_api import cache_kwargs
from tests.pruners.references import (
    SCALE,
    SEQ,
    assert_keeps_the_reference,
    attention_row,
    first_real,
    kept_by_rank,
    query_heads,
    random_inputs,
)


def window_attention(query, key, b, qh, h, window, start):
    """The window's queries' causal softmax rows over the real keys: ``[row over positions start..SEQ-1]`` per query,
    with 0 for the positions a query cannot see."""
    rows = []
    for position in range(SEQ - window, SEQ):
        probs = attention_row(query[b, qh, position], key[b, h], position, start)
        rows.append([probs.get(j, 0.0) for j in range(SEQ)])
    return rows


def mean_and_variance(rows, j):
    values = [row[j] for row in rows]
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def reference_scores(query, key, valid, window, gamma, kernel=5):
    """Per (batch, KV head): position -> score over the positions before the window."""
    prefix = SEQ - window
    out = []
    for b in range(query.shape[0]):
        start = first_real(valid, b)
        per_head = []
        for h in range(key.shape[1]):
            heads = query_heads(h)
            score = [0.0] * prefix
            for qh in heads:
                rows = window_attention(query, key, b, qh, h, window, start)
                raw = []
                for j in range(prefix):
                    mean, var = mean_and_variance(rows, j)
                    raw.append(mean + gamma * var)
                for j in range(prefix):  # average pooling, zeros beyond the edges
                    near = [raw[i] for i in range(j - kernel // 2, j + kernel // 2 + 1) if 0 <= i < prefix]
                    score[j] += sum(near) / kernel / len(heads)
            per_head.append(score)
        out.append(per_head)
    return out


def reference_kept(query, key, valid, budget, window, gamma):
    scores = reference_scores(query, key, valid, window, gamma)
    out = []
    for b, per_head in enumerate(scores):
        start = first_real(valid, b)
        rows = []
        for score in per_head:
            order = sorted((j for j in range(start, SEQ - window)), key=lambda j: -score[j])
            rows.append(kept_by_rank(order, budget, window, SEQ, start))
        out.append(rows)
    return out


def reference_preference(query, key, valid, window, tau1, tau2):
    entropy = variance = 0.0
    for b in range(query.shape[0]):
        start = first_real(valid, b)
        for h in range(key.shape[1]):
            for qh in query_heads(h):
                rows = window_attention(query, key, b, qh, h, window, start)
                for j in range(SEQ - window):
                    entropy -= sum(row[j] * math.log(row[j] + 1e-10) for row in rows)
                    variance += mean_and_variance(rows, j)[1]
    return entropy ** (1 / tau1) * variance ** (1 / tau2)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("budget,window,gamma", [(20, 8, 200.0), (40, 32, 200.0), (31, 4, 0.0)])
def test_cake_keeps_what_a_loop_over_the_windows_mean_and_variance_keeps_head_by_head(
    budget, window, gamma, padded, rng
):
    query, key, valid = random_inputs(rng)
    valid = valid if padded else None
    expected = reference_kept(query, key, valid, budget, window, gamma)
    assert_keeps_the_reference(CAKE(window=window, gamma=gamma), query, key, valid, budget, expected)


@pytest.mark.parametrize("padded", [False, True])
def test_cake_scores_match_the_loop_and_ignore_the_queries_before_the_window(padded, rng):
    query, key, valid = random_inputs(rng)
    valid = valid if padded else None
    pruner = CAKE(window=8)
    scores = pruner.score(query, key, valid, SCALE)
    expected = torch.tensor(reference_scores(query, key, valid, 8, 200.0), dtype=torch.float32)
    torch.testing.assert_close(scores[..., : SEQ - 8], expected, rtol=1e-4, atol=1e-6)
    assert torch.isinf(scores[..., SEQ - 8 :]).all()
    noisy = torch.cat([torch.randn_like(query[:, :, :-8]) * 3, query[:, :, -8:]], dim=2)
    assert torch.equal(pruner.score(noisy, key, valid, SCALE), scores)
    assert pruner.layer_statistic(noisy, key, valid, SCALE) == pruner.layer_statistic(query, key, valid, SCALE)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("tau1,tau2", [(1.0, 1.0), (1.6, 0.4)])
def test_cake_preference_is_the_windows_entropy_and_variance_as_a_loop_computes_them(tau1, tau2, padded, rng):
    query, key, valid = random_inputs(rng)
    valid = valid if padded else None
    found = CAKE(window=8, tau1=tau1, tau2=tau2).layer_statistic(query, key, valid, SCALE)
    assert found == pytest.approx(reference_preference(query, key, valid, 8, tau1, tau2), rel=1e-4)


def test_cake_spreads_the_selected_tokens_in_proportion_to_the_preferences():
    pruner = CAKE(window=8)
    # 4 layers of 40 (32 selected each, 128 in all); preferences 1:2:3:2 -> 16, 32, 48, 32 selected
    assert pruner.layer_tokens([40] * 4, 200, [1.0, 2.0, 3.0, 2.0]) == [24, 40, 56, 40]
    assert pruner.last_schedule["mode"] == "preference"
    # a prompt of 50 caps a layer at 42 selected: its 6 extra go to the others in proportion (16 : 32 : 32)
    capped = pruner.layer_tokens([40] * 4, 50, [1.0, 2.0, 3.0, 2.0])
    assert sum(capped) == 160 and max(capped) == 50 and capped[2] == 50
    for layer, share in ((0, 17.2), (1, 34.4), (3, 34.4)):
        assert abs(capped[layer] - 8 - share) < 1
    # the same preferences anywhere give uniform budgets; so do none, or all zero
    assert pruner.layer_tokens([40] * 4, 200, [0.3] * 4) == [40] * 4
    assert pruner.layer_tokens([40] * 4, 200, [0.0] * 4) == [40] * 4
    assert pruner.layer_tokens([40] * 4, 200) == [40] * 4
    # a prompt the budget covers is kept whole in every layer
    assert pruner.layer_tokens([40] * 4, 30, [1.0, 2.0, 3.0, 2.0]) == [40] * 4
    # layer-wise plans (e.g. 8 bits in one layer, 16 in the other): equal preferences leave each layer's bytes alone
    assert pruner.layer_tokens([72, 40], 500, [1.0, 1.0]) == [72, 40]
    with pytest.raises(ValueError, match="2 layer preferences for 4 layers"):
        pruner.layer_tokens([40] * 4, 200, [1.0, 2.0])


@pytest.mark.parametrize("params,message", [
    ({"window": 0}, "no observation window"),
    ({"kernel_size": 4}, "is even"),
    ({"gamma": -1.0}, "pruner.gamma=-1.0 is out of range"),
    ({"tau1": 0.0}, "pruner.tau1=0.0 is out of range"),
    ({"tau2": float("inf")}, "pruner.tau2=inf is not finite"),
])
def test_cake_refuses_parameters_it_cannot_use_in_one_line(params, message):
    with pytest.raises(ConfigError, match=message):
        get_pruner("cake", **params)


def reference_pipeline(model, pruner, ids, tokens):
    """The kept positions per layer: every layer's prefill recorded, its preference, the spread, each layer's choice."""
    layers = record_prefill(model, ids)
    statistics = [pruner.layer_statistic(q, k, None, s) for q, k, _, s in layers]
    spread = pruner.layer_tokens([tokens] * len(layers), ids.shape[1], statistics)
    kept = [pruner.choose(q, k, None, s, n).keep for (q, k, _, s), n in zip(layers, spread)]
    return spread, [keep[0].nonzero()[:, 1].view(keep.shape[1], -1) for keep in kept]


def test_cake_through_a_model_spreads_the_layers_as_the_reference_pipeline_on_every_path(tiny_models):
    model, _ = tiny_models("llama")
    pruner = CAKE(window=8)
    compressor = KVCompressor(pruner=pruner, quantizer=KIVI(bits=4), tokens=40)
    ids = torch.randint(100, 40000, (1, 150), generator=torch.Generator().manual_seed(3))
    generation = {"max_new_tokens": 4, "do_sample": False}
    with torch.no_grad():
        spread, expected = reference_pipeline(model, pruner, ids, 40)
        assert len(set(spread)) > 1 and sum(spread) == 40 * model.config.num_hidden_layers
        with compressor.attach(model):
            inline = compressor.new_cache(model)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(model, inline), **generation)
        recording = SharedPrefill.record(model, compressor, ids, generation, queries=pruner.queries_read)
        shared = compressor.new_cache(model)
        with compressor.attach(model), recording.replayed(model, compressor, shared):
            replayed = model.generate(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(model, shared),
                                      **generation)
        prompt = RecordedPrompt("s", ids, record_prefill(model, ids), out[0, ids.shape[1]:])
        calibration = build_cache(model, compressor, prompt)
    assert torch.equal(out, replayed)
    assert inline.prefill_result().kept_tokens == 40
    for layer, (tokens, positions) in enumerate(zip(spread, expected)):
        for cache in (inline, shared, calibration):
            kept = cache.kept_positions(layer)[0]
            assert kept.shape[-1] == tokens and torch.equal(kept, positions)


def test_cake_compresses_every_global_layer_when_sliding_window_layers_come_last(rng):
    """Gemma 3's last layers are sliding-window layers: they are compressed in line and must not hold back the
    global layers' joint compression (which would otherwise wait for the first decode step)."""
    from qpruning.attention import ForwardContext
    from qpruning.cache.cache import QPrunedCache
    from qpruning.compressor import ModelGeometry

    geometry = ModelGeometry("gemma3_text", 4, 2, 6, 16, 4096, sliding_layers=(1, 3), sliding_window=16)
    compressor = KVCompressor(pruner=CAKE(window=8), quantizer=KIVI(bits=16), tokens=40)  # head_dim 16: no groups
    plans = compressor.plan(geometry)
    cache = QPrunedCache(4, plans=plans)
    context = ForwardContext(compressor, cache)
    layers = [random_inputs(rng)[:2] for _ in range(4)]
    for index, (query, key) in enumerate(layers):
        query, key = query[:1], key[:1]
        cache.layers[index].update(key, key.clone())
        context.compress_layer(index, query, key, key.clone(), SCALE)
    assert not any(layer.compression_pending for layer in cache.layers)
    assert cache.layers[0].compressed and cache.layers[2].compressed
    statistics = [pruner_statistic(layers[i], compressor.pruner) for i in (0, 2)]
    spread = compressor.pruner.layer_tokens([40, 40], SEQ, statistics)
    assert [cache.kept_positions(i).shape[-1] for i in (0, 2)] == spread and spread[0] != spread[1]


def pruner_statistic(layer, pruner):
    query, key = layer
    return pruner.layer_statistic(query[:1], key[:1], None, SCALE)
