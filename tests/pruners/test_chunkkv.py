"""ChunkKV keeps, head by head, the observation window and then whole chunks of consecutive tokens in the order of
their summed window votes (chunks counted from the first real token, the last chunk cut to its first tokens at the
budget), as a plain loop does; through a model it keeps exactly its budget, in whole chunks but one."""

import pytest

from qpruning.errors import ConfigError
from qpruning.pruners import ChunkKV, get_pruner
from tests.pruners.references import (
    SEQ,
    assert_keeps_the_reference,
    attention_row,
    first_real,
    generate_compressed,
    kept_by_rank,
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
    expected = reference(query, key, valid, budget, window, chunk_size)
    assert_keeps_the_reference(ChunkKV(window=window, chunk_size=chunk_size), query, key, valid, budget, expected)


def test_chunkkv_defaults_and_refusals():
    pruner = get_pruner("chunkkv")
    assert pruner == ChunkKV() and (pruner.window, pruner.chunk_size, pruner.kernel_size) == (32, 10, 1)
    assert pruner.queries_read == 32
    with pytest.raises(ConfigError, match="chunk_size"):
        ChunkKV(chunk_size=0)


def test_chunkkv_through_a_model_keeps_its_budget_in_whole_chunks_but_the_last(tiny_models):
    model, _ = tiny_models("llama")
    _, cache = generate_compressed(model, ChunkKV(window=8, chunk_size=5), tokens=31, batch=1, length=120, seed=5)
    for layer in range(model.config.num_hidden_layers):
        for positions in cache.kept_positions(layer)[0].tolist():
            assert positions[-8:] == list(range(112, 120))
            chunks = {}
            for j in positions[:-8]:
                chunks[j // 5] = chunks.get(j // 5, 0) + 1
            assert sorted(chunks.values())[1:] == [5] * (len(chunks) - 1)  # 23 tokens: 4 whole chunks and 3
