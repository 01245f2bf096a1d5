"""ChunkKV: chunks of consecutive tokens are kept or dropped together.

Liu et al., "ChunkKV: Semantic-Preserving KV Cache Compression for Efficient Long-Context LLM Inference",
NeurIPS 2025. Tokens are scored as SnapKV scores them (the attention of the observation window, the last
``window`` queries, summed over the window; per query head, averaged over the query heads of a KV head), and the
prompt before the window is cut into chunks of ``chunk_size`` consecutive tokens (10, the paper's default), counted
from each row's first real token. A chunk's score is the sum of its tokens' scores, and every token carries its
chunk's score, so the chunks are kept whole in the order of their scores, per KV head.

The budget is kept exactly: the selection ranks tokens with a stable sort (:func:`select_tokens` with
``stable=True``), so the tokens of a chunk stay together (an earlier chunk first when two score the same) and the
last chunk admitted is cut to its first tokens when the budget ends inside it. ``kernel_size`` defaults to 1 (no
pooling: the chunk already brings a token's neighbours along); SnapKV's pooling stays available.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from qpruning.errors import check_int
from qpruning.pruners.base import Selection, select_tokens
from qpruning.pruners.snapkv import SnapKV


@dataclass
class ChunkKV(SnapKV):
    """SnapKV's window votes summed over chunks of ``chunk_size`` consecutive tokens; whole chunks kept by rank.

    Args:
        window: the observation window, also kept as the most recent tokens.
        chunk_size: consecutive tokens per chunk.
        kernel_size, pooling: SnapKV's pooling of the votes before they are summed (1: none).
    """

    name: ClassVar[str] = "chunkkv"
    window: int = 32
    kernel_size: int = 1
    chunk_size: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("pruner.chunk_size", self.chunk_size, minimum=1, meaning="consecutive tokens per chunk")

    def score(self, query, key, key_valid, scaling):
        votes = super().score(query, key, key_valid, scaling)  # [batch, kv_heads, seq], the window at +inf
        batch, heads, seq = votes.shape
        prefix = seq - min(self.window, seq)
        if prefix == 0:
            return votes
        positions = torch.arange(prefix, device=votes.device).expand(batch, prefix)
        if key_valid is not None:
            # Left padding: chunks start at each row's first real token (padding gets no votes; it joins chunk 0).
            positions = (positions - (~key_valid).sum(-1, keepdim=True)).clamp(min=0)
        chunk = (positions // self.chunk_size).unsqueeze(1).expand(batch, heads, prefix)
        sums = torch.zeros(batch, heads, -(-prefix // self.chunk_size), device=votes.device)
        sums.scatter_add_(-1, chunk, votes[..., :prefix])
        return torch.cat([sums.gather(-1, chunk), votes[..., prefix:]], dim=-1)

    def select(self, scores, counts, key_valid, window):
        return Selection(select_tokens(scores, counts, key_valid, window, stable=True))
