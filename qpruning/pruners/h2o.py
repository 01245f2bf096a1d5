"""H2O: keep the heavy hitters, the tokens that gathered the most attention over the prompt.

Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
NeurIPS 2023. A token's score is the attention it received from every query of the prompt, summed. The paper
under study keeps the last 32 tokens as the recent window (Appendix B). Queries are processed in chunks, so a
32k-token prompt never materializes an L x L attention matrix per head.
"""

from __future__ import annotations

import math
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

    def paper_score(self, query, key, key_valid, scaling):
        """``compat=paper``: the scores of the paper's code (``H2OKVCluster``), per query head (``key`` already
        repeated to the query heads). Its mask covers only the last ``window x window`` block: the queries before
        the window see every key, later ones included. Every query chunk is multiplied with every key."""
        return _paper_scores(query, key, key_valid, scaling, min(self.window, key.shape[2]))


def _paper_scores(query, key, key_valid, scaling: float, window: int) -> torch.Tensor:
    """Attention summed over every prompt query, ``[batch, heads, seq]`` float32, with the paper code's H2O mask
    (query ``i`` sees key ``j`` unless both are in the last ``window`` tokens and ``j > i``). ``query`` and
    ``key`` have the same heads. Padding keys are masked and padding queries add nothing."""
    batch, heads, seq, _ = query.shape
    total = torch.zeros(batch, heads, seq, dtype=torch.float32, device=key.device)
    keys = key.float().transpose(-1, -2)
    columns = torch.arange(seq, device=key.device)
    chunk = query_chunk_size(batch, heads, seq)
    for start in range(0, seq, chunk):
        stop = min(seq, start + chunk)
        rows = torch.arange(start, stop, device=key.device).unsqueeze(1)
        blocked = (rows >= seq - window) & (columns.unsqueeze(0) > rows)  # [n, seq]
        blocked = blocked.view(1, 1, stop - start, seq)
        if key_valid is not None:
            blocked = blocked | ~key_valid.view(batch, 1, 1, seq)
        logits = torch.matmul(query[:, :, start:stop].float(), keys) * scaling
        probs = torch.softmax(logits.masked_fill(blocked, -math.inf), dim=-1)
        if key_valid is not None:
            probs = torch.nan_to_num(probs, nan=0.0) * key_valid[:, start:stop].view(batch, 1, -1, 1)
        total += probs.sum(dim=2)
    return total
