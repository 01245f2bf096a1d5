"""H2O's score alone, on one layer shaped like SmolLM2-135M's (9 query heads, 3 KV heads, head dim 64): the fused
scorer against the previous one (chunks of ``grouped_attention_probs`` summed, 256 MiB blocks) and against the
layer's own causal attention (``scaled_dot_product_attention``), interleaved, best of ``--rounds``.

    python scripts/bench_h2o_score.py --tokens 4096 --threads 2 --rounds 3

``--chunks 113 227 455`` also times the fused scorer with blocks of that many queries (it sets
``qpruning.pruners.base.SCORE_BLOCK_NUMBERS`` for the run).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from qpruning.pruners import base
from qpruning.pruners.base import grouped_attention_probs
from qpruning.pruners.h2o import accumulated_attention

Q_HEADS, KV_HEADS, DIM = 9, 3, 64


def previous_score(query, key, scaling, block_numbers=1 << 26):
    """The scorer before issue 15: chunks of the attention probabilities of every query, summed."""
    batch, q_heads, seq, _ = query.shape
    total = torch.zeros(batch, key.shape[1], seq)
    chunk = max(1, min(seq, block_numbers // (batch * q_heads * seq)))
    for start in range(0, seq, chunk):
        stop = min(seq, start + chunk)
        positions = torch.arange(start, stop)
        probs = grouped_attention_probs(query[:, :, start:stop], key[:, :, :stop], scaling, positions, None)
        total[..., :stop] += probs.sum(dim=3).mean(dim=2)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, nargs="*", default=[], help="also time these query-chunk sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    # Laid out as a model's projections leave them: [batch, seq, heads, dim] memory, viewed as [batch, heads, ...].
    query = torch.randn(1, args.tokens, Q_HEADS, DIM, generator=generator).transpose(1, 2)
    key = torch.randn(1, args.tokens, KV_HEADS, DIM, generator=generator).transpose(1, 2)
    scaling = DIM**-0.5
    candidates = {
        "attention (sdpa)": lambda: torch.nn.functional.scaled_dot_product_attention(
            query, key, key, is_causal=True, enable_gqa=True
        ),
        "previous H2O score": lambda: previous_score(query, key, scaling),
        "fused H2O score": lambda: accumulated_attention(query, key, None, scaling),
    }
    default_blocks = base.SCORE_BLOCK_NUMBERS

    def fused_with_chunk(chunk: int):
        def run():
            base.SCORE_BLOCK_NUMBERS = chunk * Q_HEADS * args.tokens
            try:
                return accumulated_attention(query, key, None, scaling)
            finally:
                base.SCORE_BLOCK_NUMBERS = default_blocks

        return run

    for chunk in args.chunks:
        candidates[f"fused H2O score, {chunk}-query chunks"] = fused_with_chunk(chunk)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, run in candidates.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.tokens} tokens, {args.threads} threads, best of {args.rounds}, load average {load}")
    for name, values in times.items():
        print(f"{name}: {min(values):.3f} s")


if __name__ == "__main__":
    main()
