"""Slow, plain re-implementations shared by the pruner tests: loops over rows and positions, in float64."""

from __future__ import annotations

import math

import torch

BATCH, Q_HEADS, KV_HEADS, SEQ, DIM = 2, 6, 2, 80, 16
SCALE = DIM**-0.5
PAD = 7  # row 1 is left-padded by this many tokens


def random_inputs(rng):
    """Fresh random queries ``[BATCH, Q_HEADS, SEQ, DIM]`` and keys ``[BATCH, KV_HEADS, SEQ, DIM]`` (grouped-query:
    3 query heads per KV head), and a ``key_valid`` mask whose row 1 is left-padded."""
    query = 2 * torch.randn(BATCH, Q_HEADS, SEQ, DIM, generator=rng)
    key = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    valid = torch.ones(BATCH, SEQ, dtype=torch.bool)
    valid[1, :PAD] = False
    return query, key, valid


def first_real(valid, b):
    return 0 if valid is None else int((~valid[b]).sum())


def query_heads(h):
    group = Q_HEADS // KV_HEADS
    return range(h * group, (h + 1) * group)


def attention_row(q_vec, key_rows, position, start):
    """One query's causal softmax over the real keys ``start..position``, as a dict position -> probability."""
    logits = {j: float(q_vec.double() @ key_rows[j].double()) * SCALE for j in range(start, position + 1)}
    top = max(logits.values())
    exps = {j: math.exp(x - top) for j, x in logits.items()}
    total = sum(exps.values())
    return {j: e / total for j, e in exps.items()}


def kept_by_rank(order, budget, window, seq, start):
    """The positions a row keeps: the last ``window`` (real) tokens, then ``order``'s positions until ``budget``."""
    kept = [j for j in range(max(seq - window, start), seq)]
    for j in order:
        if len(kept) >= min(budget, seq - start):
            break
        if j not in kept:
            kept.append(j)
    return sorted(kept)


def kept_positions(keep):
    """``keep`` ``[batch, heads, seq]`` as nested lists of kept positions."""
    return [[row.nonzero().flatten().tolist() for row in head_rows] for head_rows in keep]


def assert_keeps_the_reference(pruner, query, key, valid, budget, expected):
    """``pruner.choose`` keeps exactly ``expected``'s positions, row by row, and the KV heads choose differently."""
    found = kept_positions(pruner.choose(query, key, valid, SCALE, budget).keep)
    assert found == expected
    assert found[0][0] != found[0][1]


def generate_compressed(model, pruner, tokens, batch, length, seed):
    """Three greedy tokens of ``model`` after a random prompt ``[batch, length]``, through a 4-bit KIVI compressor
    keeping ``tokens``: ``(ids, cache)``, checked to have generated and kept ``tokens`` per layer."""
    from qpruning import KIVI, KVCompressor
    from qpruning.transformers_api import cache_kwargs

    compressor = KVCompressor(pruner=pruner, quantizer=KIVI(bits=4), tokens=tokens)
    ids = torch.randint(100, 40000, (batch, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(), compressor.attach(model):
        cache = compressor.new_cache(model)
        out = model.generate(ids, max_new_tokens=3, do_sample=False, **cache_kwargs(model, cache))
    assert out.shape[1] == length + 3 and cache.prefill_result().kept_tokens == tokens
    return ids, cache
