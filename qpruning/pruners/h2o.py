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

from qpruning.pruners.base import Pruner, query_chunk_size


def accumulated_attention(
    query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """The causal attention every (real) prompt query paid to every key, summed over the queries and averaged
    over the query heads of each KV head: ``[batch, kv_heads, seq]`` in float32.

    ``query`` is ``[batch, q_heads, seq, d]``, ``key`` ``[batch, kv_heads, seq, d]``; ``key_valid``
    ``[batch, seq]`` marks real tokens (``None``: nothing is padded). Padded keys receive nothing and padded
    queries give nothing.

    The same numbers as summing :func:`~qpruning.pruners.base.grouped_attention_probs` over query chunks, with
    less memory traffic: queries are scaled and converted once; the query heads of a KV head are laid out as
    rows of one matrix so that a chunk is a single batched product against the keys it can see; only the
    diagonal block of a chunk (keys at the chunk's own positions) needs the causal mask, the keys before it
    being visible to all its queries; the (weighted) sum over queries is a product with a weight vector.
    """
    batch, q_heads, seq, dim = query.shape
    kv_heads = key.shape[1]
    group = q_heads // kv_heads
    rows = batch * kv_heads
    # [rows, seq * group, d]: query position major, query head of the group minor.
    q = (query.float() * scaling).reshape(rows, group, seq, dim).transpose(1, 2).reshape(rows, seq * group, dim)
    key_t = key.float().reshape(rows, seq, dim).transpose(1, 2)
    total = torch.zeros(rows, 1, seq, dtype=torch.float32, device=key.device)
    chunk = query_chunk_size(batch, q_heads, seq)
    positions = torch.arange(chunk, device=key.device)
    later = (positions.view(1, -1) > positions.view(-1, 1)).repeat_interleave(group, dim=0)  # [chunk*group, chunk]
    if key_valid is None:
        weights = torch.full((rows, 1, chunk * group), 1.0 / group, device=key.device)
    else:
        # Query weights: 1/group for a real query, 0 for a padded one, [rows, 1, seq * group].
        weights = (key_valid.float() / group).repeat_interleave(group, dim=1).repeat_interleave(kv_heads, dim=0)
        weights = weights.unsqueeze(1)
        # Padded keys get the lowest finite logit rather than -inf: a padded query that sees only padding then
        # has a finite (uniform) row instead of NaNs, and its weight of 0 removes it; in any row with a real key,
        # exp(lowest - max) is exactly 0, as exp(-inf) would be.
        padded = ~key_valid.view(batch, 1, 1, seq)
        lowest = torch.finfo(torch.float32).min
    for start in range(0, seq, chunk):
        stop = min(seq, start + chunk)
        size = stop - start
        logits = torch.bmm(q[:, start * group : stop * group], key_t[:, :, :stop])  # [rows, size*group, stop]
        logits[:, :, start:].masked_fill_(later[: size * group, :size], -math.inf)
        if key_valid is None:
            chunk_weights = weights[:, :, : size * group]
        else:
            logits.view(batch, kv_heads, size * group, stop).masked_fill_(padded[..., :stop], lowest)
            chunk_weights = weights[:, :, start * group : stop * group]
        probs = torch.softmax(logits, dim=-1)
        total[:, :, :stop] += torch.bmm(chunk_weights, probs)
    return total.view(batch, kv_heads, seq)


@dataclass
class H2O(Pruner):
    """Accumulated attention over all prompt queries, averaged over the query heads of each KV head."""

    name: ClassVar[str] = "h2o"
    window: int = 32

    def score(self, query, key, key_valid, scaling):
        return accumulated_attention(query, key, key_valid, scaling)
