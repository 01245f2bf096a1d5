"""How far qpruning's current (``compat=methods``) selections are from the paper code's, on random q/k.

Compares qpruning's SnapKV, H2O and StreamingLLM pruners with the slow reference of the paper's code
(``tests/paper_reference.py``) on random post-RoPE queries and keys, per query head, and prints the Jaccard index
of the kept token sets. Run from the repository root:

    PYTHONPATH=$PWD python scripts/fidelity_crosscheck.py
"""

from __future__ import annotations

import math

import torch

from qpruning.pruners.base import select_tokens
from qpruning.pruners.h2o import H2O
from qpruning.pruners.snapkv import SnapKV
from qpruning.pruners.streamingllm import StreamingLLM
from tests import paper_reference as ref

SEQ, DIM, BUDGET = 512, 32, 64


def qpruning_keep(pruner, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Keep mask ``[batch, kv_heads, seq]`` of a qpruning pruner at a uniform budget."""
    scores = pruner.score(query, key, None, 1 / math.sqrt(query.shape[-1]))
    counts = torch.full(scores.shape[:2], BUDGET)
    return select_tokens(scores, counts, None, pruner.window)


def jaccard(mask_row: torch.Tensor, positions: torch.Tensor) -> float:
    mine = set(torch.nonzero(mask_row).flatten().tolist())
    theirs = set(positions.tolist())
    return len(mine & theirs) / len(mine | theirs)


def main() -> None:
    torch.manual_seed(0)
    for q_heads, kv_heads in ((4, 4), (8, 2)):
        query = torch.randn(1, q_heads, SEQ, DIM)
        key = torch.randn(1, kv_heads, SEQ, DIM)
        group = q_heads // kv_heads
        cases = (
            ("snapkv window 8", SnapKV(window=8), ref.snapkv_keep(query, key, BUDGET, 8)),
            ("h2o window 8", H2O(window=8), ref.h2o_keep(query, key, BUDGET, 8)),
            ("streamingllm window 32", StreamingLLM(window=32), ref.streamingllm_keep(1, q_heads, SEQ, BUDGET, 32)),
        )
        for name, pruner, expected in cases:
            mask = qpruning_keep(pruner, query, key)
            values = [jaccard(mask[0, h // group], expected[0, h]) for h in range(q_heads)]
            print(f"{q_heads} query / {kv_heads} KV heads, {name}: Jaccard min {min(values):.3f} "
                  f"mean {sum(values) / len(values):.3f}")
        if q_heads == kv_heads:
            scores = ref.snapkv_scores(query, key, 8, 7, "max")
            mask = qpruning_keep(SnapKV(window=8), query, key)
            kept = torch.stack([torch.nonzero(mask[0, h]).flatten() for h in range(q_heads)]).unsqueeze(0)
            print(f"  snapkv without GQA equal ties aside: {ref.agree_ties_aside(kept, ref.snapkv_keep(query, key, BUDGET, 8), scores)}")


if __name__ == "__main__":
    main()
