"""Ada-KV: adaptive budget allocation across the heads of a layer (here on SnapKV scores: Ada-SnapKV).

Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM Inference",
2024 (arXiv:2407.11550); reference code FFY0/AdaKV (``AdaptiveSnapKVCluster``), whose GQA variant is what runs
here. A layer with ``H`` KV heads and a budget of ``b`` tokens per head keeps ``H * b`` tokens in all, but not
``b`` in every head: heads whose attention is concentrated need few tokens, dispersed heads need many.

Per layer, with the observation window of ``w`` tokens kept in every head and ``B = b - w`` tokens to select:

1. scores: SnapKV's, i.e. the window's attention on each earlier token, pooled (kernel 7, max), and averaged over
   the query heads that share a KV head (Ada-KV's ``gqa_support``: the cache is never expanded to query heads).
   Every window query's probabilities sum to one, so scores are comparable across heads;
2. allocation (Ada-KV's Algorithm 1): the top ``H * B`` scores over all heads of the layer, taken jointly;
   ``c_h`` of them fall in head ``h``;
3. safeguard: every head first gets ``F = floor(alpha * B)`` tokens and the remaining ``H * (B - F)`` are shared
   in proportion to ``c_h``. The reference code rounds ``c_h * (1 - alpha) + F`` head by head, which can miss the
   layer's total by a token or two; here the shares are rounded by largest remainder (exact integer arithmetic),
   so that the layer holds exactly ``H * b`` tokens and every head at least ``F + w``. ``alpha = 0.2`` is what the
   Ada-KV authors recommend with GQA (``GQA_eval_longbench.sh``) and KVCache-Factory's default (``--floor``);
4. selection: each head keeps its own top ``F + share_h`` tokens and the window.

``normalize=True`` is the reference code's ``--normalize`` option (off in its scripts): each head's scores are
first weighted by the share of its score mass that its own top ``B`` tokens hold.

The paper under study keeps 8 tokens as the window for Ada-KV (Appendix B) and stores the result with FlexGen's
per-token groups; the cache holds each (batch item, KV head) row at its own length, without padding
(:mod:`qpruning.cache.segments`), so the bytes held fall with the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from qpruning.errors import ConfigError
from qpruning.pruners.base import _real_lengths
from qpruning.pruners.snapkv import SnapKV


def round_shares(numerators: torch.Tensor, denominator: int, totals: torch.Tensor) -> torch.Tensor:
    """Largest-remainder rounding of ``numerators / denominator`` (integers, ``[rows, n]``) to integers whose
    rows sum to ``totals`` (``[rows]``; each equal to the exact row sum of the quotients).

    Exact integer arithmetic; ties between equal remainders go to the lower index.
    """
    numerators = numerators.long()
    floors = torch.div(numerators, denominator, rounding_mode="floor")
    remainders = numerators - floors * denominator
    missing = totals.long() - floors.sum(-1)  # [rows]
    order = torch.argsort(-remainders, dim=-1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return floors + (rank < missing.unsqueeze(-1)).long()


@dataclass
class AdaKV(SnapKV):
    """Ada-SnapKV: SnapKV scores, head-wise budgets chosen jointly within each layer, with a floor per head.

    Args:
        window: the observation window, also kept in every head (8 in the paper under study, Appendix B).
        kernel_size: SnapKV's pooling kernel (odd).
        pooling: ``max`` or ``avg``.
        floor_alpha: the safeguard: every head keeps at least ``floor(floor_alpha * (budget - window))`` selected
            tokens, and ``1 - floor_alpha`` of the selected budget is allocated adaptively. 0 is pure adaptive
            allocation, 1 is SnapKV's uniform allocation.
        normalize: weight each head's scores by the share of its score mass in its own top ``budget - window``
            tokens before the joint selection (the reference code's ``--normalize``; off there by default).
    """

    name: ClassVar[str] = "adakv"
    window: int = 8
    kernel_size: int = 7
    pooling: str = "max"
    floor_alpha: float = 0.2
    normalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.floor_alpha <= 1.0:
            raise ConfigError(f"pruner.floor_alpha={self.floor_alpha} is out of range", "adakv: floor_alpha must be in [0, 1]")

    def allocate(self, scores, tokens, key_valid, layer_idx=0):
        """Tokens each KV head keeps, ``[batch, kv_heads]``: ``window + floor + share`` per head, summing to
        ``kv_heads * tokens`` per batch item; a row with at most ``tokens`` real tokens keeps them all."""
        batch, heads, seq = scores.shape
        real = _real_lengths(key_valid, batch, seq, scores.device)
        window = min(self.window, seq)
        prefix = seq - window
        selected = tokens - window
        if selected <= 0 or selected >= prefix:
            return super().allocate(scores, tokens, key_valid, layer_idx)
        counts = window + self.selected_counts(scores[..., :prefix], selected, key_valid)
        # A row with no more real tokens than its kept tokens keeps all of them (and only them).
        short = (real <= tokens).unsqueeze(1)
        return torch.where(short, real.unsqueeze(1).expand(batch, heads), counts)

    def selected_counts(
        self, prefix_scores: torch.Tensor, selected: int, key_valid: torch.Tensor | None
    ) -> torch.Tensor:
        """Selected (non-window) tokens per head, ``[batch, heads]``, from the scores of the tokens before the
        window: the joint top ``heads * selected`` choice, then the safeguard floor (see the module docstring)."""
        batch, heads, prefix = prefix_scores.shape
        s = prefix_scores.float().clone()
        if key_valid is not None:
            s.masked_fill_(~key_valid[:, :prefix].unsqueeze(1), -math.inf)
        if self.normalize:
            finite = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
            top = finite.topk(selected, dim=-1).values.sum(-1, keepdim=True)
            total = finite.sum(-1, keepdim=True)
            s = s * torch.where(total > 0, top / total.clamp_min(1e-30), torch.ones_like(total))
        chosen_index = s.reshape(batch, heads * prefix).topk(heads * selected, dim=-1).indices
        chosen = torch.zeros(batch, heads, dtype=torch.long, device=s.device)
        chosen.scatter_add_(1, chosen_index // prefix, torch.ones_like(chosen_index))
        floor = int(math.floor(self.floor_alpha * selected + 1e-9))
        adaptive = heads * (selected - floor)
        totals = torch.full((batch,), adaptive, dtype=torch.long, device=s.device)
        # share_h = c_h * adaptive / (heads * selected), rounded so that the shares sum to ``adaptive``.
        shares = round_shares(chosen * adaptive, heads * selected, totals)
        return floor + shares

    def describe(self) -> str:
        extra = ", normalize" if self.normalize else ""
        return f"{self.name}(window={self.window}, floor_alpha={self.floor_alpha}{extra})"
