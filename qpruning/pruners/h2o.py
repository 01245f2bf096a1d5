"""H2O: keep the heavy hitters, the tokens that gathered the most attention over the prompt.

Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
NeurIPS 2023. A token's score is the attention it received from every query of the prompt, summed. The paper
under study keeps the last 32 tokens as the recent window (Appendix B). Queries are processed in chunks, so a
32k-token prompt never materializes an L x L attention matrix per head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from qpruning.pruners.base import Pruner, grouped_attention_probs, query_chunk_size


@dataclass
class H2O(Pruner):
    """Accumulated attention over all prompt queries, averaged over the query heads of each KV head."""

    name: ClassVar[str] = "h2o"
    window: int = 32

    def score(self, query, key, key_valid, scaling):
        batch, q_heads, seq, _ = query.shape
        kv_heads = key.shape[1]
        total = torch.zeros(batch, kv_heads, seq, dtype=torch.float32, device=key.device)
        chunk = query_chunk_size(batch, q_heads, seq)
        for start in range(0, seq, chunk):
            stop = min(seq, start + chunk)
            positions = torch.arange(start, stop, device=key.device)
            # Causal: queries before ``stop`` see only the keys before it, so the later keys are left out of the
            # product (half the work of the full rectangle over the prompt).
            valid = key_valid[:, :stop] if key_valid is not None else None
            probs = grouped_attention_probs(query[:, :, start:stop], key[:, :, :stop], scaling, positions, valid)
            if key_valid is not None:
                # Padding queries contribute nothing (their rows are already zero); kept explicit for clarity.
                probs = probs * key_valid[:, start:stop].view(batch, 1, 1, -1, 1)
            total[..., :stop] += probs.sum(dim=3).mean(dim=2)
        return total
