"""ChunkKV keeps, head by head, the observation window and then whole chunks of consecutive tokens in the order of
their summed window votes (chunks counted from the first real token, the last chunk cut to its first tokens at the
budget), as a plain loop does; through a model it keeps exactly its budget, in whole chunks but one."""

import pytest
import torch

from qpruning import KIVI, KVCompressor
from qpruning.errors import ConfigError
from qpruning.pruners import ChunkKV, get_pruner
from qpruning.transformers_api import cache_kwargs
from tests.pruners.references import (
    SCALE,
    SEQ,
    attention_row,
    first_real,
    kept_by_rank,
    kept_positions,
    query_heads,
    random_inputs,
)


def reference(query, key, valid, budget, window, chunk_size):
    out = []
    prefix = SEQ - window
    for b in range(query.shape[0]):
        start = first_real(valid, b)
        rows = []
        for h in range(key.shape[1]):
            heads = query_heads(h)
            votes = dict.fromkeys(range(start, prefix), 0.0)
            for qh in heads:
                for i in range(max(prefix, start), SEQ):
                    for j, p in attention_row(query[b, qh, i], key[b, h], i, start).items():
                        if j < prefix:
                            votes[j] += p / len(heads)
            chunks = [list(range(c, min(c + chunk_size, prefix))) for c in range(start, prefix, chunk_size)]
            sums = [sum(votes[j] for j in chunk) for chunk in chunks]
            ranked = sorted(range(len(chunks)), key=lambda c: (-sums[c], c))
            order = [j for c in ranked for j in chunks[c]]
            rows.append(kept_by_rank(order, budget, window, SEQ, start))
        out.append(rows)
    return out


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("budget,window,chunk_size", [(28, 8, 10), (35, 8, 4), (50, 16, 7), (20, 8, 1)])
def test_chunkkv_keeps_what_a_loop_over_chunks_of_window_votes_keeps_head_by_head(
    budget, window, chunk_size, padded, rng
):
    query, key, valid = random_inputs(rng)
    valid = valid if padded else None
    selection = ChunkKV(window=window, chunk_size=chunk_size).choose(query, key, valid, SCALE, budget)
    found = kept_positions(selection.keep)
    assert found == reference(query, key, valid, budget, window, chunk_size)
    assert found[0][0] != found[0][1]  # the heads choose their own chunks


def test_chunkkv_defaults_and_refusals():
    pruner = get_pruner("chunkkv")
    assert pruner == ChunkKV() and (pruner.window, pruner.chunk_size, pruner.kernel_size) == (32, 10, 1)
    assert pruner.queries_read == 32
    with pytest.raises(ConfigError, match="chunk_size"):
        ChunkKV(chunk_size=0)


def test_chunkkv_through_a_model_keeps_its_budget_in_whole_chunks_but_the_last(tiny_models):
    model, _ = tiny_models("llama")
    compressor = KVCompressor(pruner=ChunkKV(window=8, chunk_size=5), quantizer=KIVI(bits=4), tokens=31)
    ids = torch.randint(100, 40000, (1, 120), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), compressor.attach(model):
        cache = compressor.new_cache(model)
        out = model.generate(ids, max_new_tokens=3, do_sample=False, **cache_kwargs(model, cache))
    assert out.shape[1] == 123 and cache.prefill_result().kept_tokens == 31
    for layer in range(model.config.num_hidden_layers):
        for positions in cache.kept_positions(layer)[0].tolist():
            assert positions[-8:] == list(range(112, 120))
            chunks = {}
            for j in positions[:-8]:
                chunks[j // 5] = chunks.get(j // 5, 0) + 1
            assert sorted(chunks.values())[1:] == [5] * (len(chunks) - 1)  # 23 tokens: 4 whole chunks and 3
