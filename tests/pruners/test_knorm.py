"""KNorm keeps, head by head, the window and then the tokens whose keys have the smallest L2 norm, as a plain loop
does; it reads no query; through a model, the compressor keeps exactly those tokens of the model's own keys."""

import pytest
import torch

from qpruning import KIVI, KVCompressor
from qpruning.pruners import KNorm, get_pruner
from qpruning.transformers_api import cache_kwargs
from tests.pruners.references import SCALE, SEQ, first_real, kept_by_rank, kept_positions, random_inputs


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
    selection = KNorm(window=window).choose(query, key, valid, SCALE, budget)
    found = kept_positions(selection.keep)
    assert found == reference(key, valid, budget, window)
    assert found[0][0] != found[0][1]  # the heads choose their own tokens


def test_knorm_reads_no_query_and_is_the_registered_knorm(rng):
    query, key, valid = random_inputs(rng)
    pruner = get_pruner("knorm")
    assert pruner == KNorm() and pruner.window == 8 and pruner.queries_read == 0
    assert torch.equal(pruner.score(query, key, valid, SCALE), pruner.score(torch.randn_like(query), key, valid, SCALE))


def test_knorm_through_a_model_keeps_the_window_and_the_smallest_keys(tiny_models):
    model, _ = tiny_models("llama")
    compressor = KVCompressor(pruner=KNorm(window=8), quantizer=KIVI(bits=4), tokens=48)
    ids = torch.randint(100, 40000, (1, 120), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), compressor.attach(model):
        cache = compressor.new_cache(model)
        out = model.generate(ids, max_new_tokens=3, do_sample=False, **cache_kwargs(model, cache))
    assert out.shape[1] == 123 and cache.prefill_result().kept_tokens == 48
    with torch.no_grad():
        plain = model(ids, use_cache=True).past_key_values
    for layer in range(model.config.num_hidden_layers):
        norms = plain.layers[layer].keys[0].float().norm(dim=-1)  # [kv_heads, 120]
        for head, positions in enumerate(cache.kept_positions(layer)[0].tolist()):
            assert positions[-8:] == list(range(112, 120))
            chosen, rest = sorted(set(positions) - set(range(112, 120))), sorted(set(range(112)) - set(positions))
            assert norms[head, chosen].max() <= norms[head, rest].min()
