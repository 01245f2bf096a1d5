"""KNorm keeps, head by head, the window and then the tokens whose keys have the smallest L2 norm, as a plain loop
does; it reads no query; through a model, the compressor keeps exactly those tokens of the model's own keys."""

import pytest
import torch

from qpruning.pruners import KNorm, get_pruner
from tests.pruners.references import (
    SCALE,
    SEQ,
    assert_keeps_the_reference,
    first_real,
    generate_compressed,
    kept_by_rank,
    random_inputs,
)


def reference(key, valid, budget, window):
    out = []
    for b in range(key.shape[0]):
        start = first_real(valid, b)
        rows = []
        for h in range(key.shape[1]):
            norms = {j: sum(float(x) ** 2 for x in key[b, h, j].double()) ** 0.5 for j in range(start, SEQ)}
            rows.append(kept_by_rank(sorted(norms, key=norms.get), budget, window, SEQ, start))
        out.append(rows)
    return out


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("budget,window", [(20, 8), (31, 0), (50, 4)])
def test_knorm_keeps_what_a_loop_over_key_norms_keeps_head_by_head(budget, window, padded, rng):
    query, key, valid = random_inputs(rng)
    valid = valid if padded else None
    assert_keeps_the_reference(KNorm(window=window), query, key, valid, budget, reference(key, valid, budget, window))


def test_knorm_reads_no_query_and_is_the_registered_knorm(rng):
    query, key, valid = random_inputs(rng)
    pruner = get_pruner("knorm")
    assert pruner == KNorm() and pruner.window == 8 and pruner.queries_read == 0
    assert torch.equal(pruner.score(query, key, valid, SCALE), pruner.score(torch.randn_like(query), key, valid, SCALE))


def test_knorm_through_a_model_keeps_the_window_and_the_smallest_keys(tiny_models):
    model, _ = tiny_models("llama")
    ids, cache = generate_compressed(model, KNorm(window=8), tokens=48, batch=1, length=SEQ, seed=3)
    with torch.no_grad():
        plain = model(ids, use_cache=True).past_key_values
    for layer in range(model.config.num_hidden_layers):
        # The plain cache's keys are the ones the pruner saw: the reference keeps what the compressor kept.
        assert cache.kept_positions(layer).tolist() == reference(plain.layers[layer].keys.float(), None, 48, 8)
