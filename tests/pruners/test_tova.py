"""TOVA keeps, head by head, the window and then the tokens the last query attends to most (its causal softmax,
averaged over the query heads of each KV head), as a plain loop does; it reads the last query only; through a model
it keeps exactly its budget."""

import pytest
import torch

from qpruning.pruners import TOVA, get_pruner
from tests.pruners.references import (
    SCALE,
    SEQ,
    assert_keeps_the_reference,
    attention_row,
    first_real,
    generate_compressed,
    kept_by_rank,
    query_heads,
    random_inputs,
)


def reference(query, key, valid, budget, window):
    out = []
    for b in range(query.shape[0]):
        start = first_real(valid, b)
        rows = []
        for h in range(key.shape[1]):
            heads = query_heads(h)
            score = dict.fromkeys(range(start, SEQ), 0.0)
            for qh in heads:
                for j, p in attention_row(query[b, qh, SEQ - 1], key[b, h], SEQ - 1, start).items():
                    score[j] += p / len(heads)
            rows.append(kept_by_rank(sorted(score, key=lambda j: -score[j]), budget, window, SEQ, start))
        out.append(rows)
    return out


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("budget,window", [(20, 1), (31, 0), (50, 8)])
def test_tova_keeps_what_a_loop_over_the_last_querys_attention_keeps_head_by_head(budget, window, padded, rng):
    query, key, valid = random_inputs(rng)
    valid = valid if padded else None
    expected = reference(query, key, valid, budget, window)
    assert_keeps_the_reference(TOVA(window=window), query, key, valid, budget, expected)


def test_tova_scores_are_the_last_querys_attention_and_read_nothing_before_it(rng):
    query, key, valid = random_inputs(rng)
    pruner = get_pruner("tova")
    assert pruner == TOVA() and pruner.window == 1 and pruner.queries_read == 1
    scores = pruner.score(query, key, valid, SCALE)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, 2))  # each KV head's row is one softmax (averaged)
    assert not scores[1, :, :7].any()  # padding gets nothing
    noisy = torch.cat([torch.randn_like(query[:, :, :-1]), query[:, :, -1:]], dim=2)
    assert torch.equal(pruner.score(noisy, key, valid, SCALE), scores)


def test_tova_through_a_model_keeps_its_budget_and_the_last_token(tiny_models):
    model, _ = tiny_models("llama")
    _, cache = generate_compressed(model, TOVA(), tokens=40, batch=2, length=100, seed=4)
    for layer in range(model.config.num_hidden_layers):
        kept = cache.kept_positions(layer)
        assert kept.shape[-1] == 40 and (kept[..., -1] == 99).all()
