"""Precision per token: the kept tokens of a layer split into tiers by the pruner's scores, each at its own bits.

``quant.tiers=[[0.1,8],[0.4,4],[0.5,2]]`` stores, in every row (batch item, KV head) of every global layer, the
best-scored 10 % of the tokens the pruner kept at 8 bits, the next 40 % at 4 and the rest at 2: the pruner's
scores rank the kept tokens (the always-kept window, scored highest, falls in the first tier), and each tier is
quantized by the run's quantizer at its own bits, as its own segments (:class:`~qpruning.cache.segments.Segment`;
attention reads segments in any order). This is the idea of ZipCache (He et al., 2024) and MiKV (Yang et al., 2024),
mixed precision by importance, on top of the paper's pruned cache.

- Tier sizes per row: with cumulative shares ``c_1 < ... < c_k = 1``, tier ``i`` takes the ranks from
  ``floor(c_{i-1} n)`` to ``floor(c_i n)`` of the row's ``n`` kept tokens (:func:`tier_counts`): every kept token is in
  exactly one tier, and tiers of a row differ from their share by less than one token.
- Budget: a tiered cache spends ``sum(share x bits)`` bits per number (nominal accounting), so ``budget=`` keeps
  ``budget x full x 16 / mean_bits`` tokens; with ``budget_mode=exact`` every tier's codes, scales, zeros and 16-bit
  remainders are counted (:func:`tiered_row_bytes`).
- ``bits`` still sets the precision of the tokens added after prefill (the decoded tokens, quantized a block at a
  time as before); sliding-window layers (Gemma 3) are stored at ``bits`` too, not tiered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from qpruning.errors import ConfigError, check_real, is_int, is_real

ALLOWED = (
    "allowed: a list of [share, bits] pairs, from the best-scored tokens down, shares in (0, 1] that sum to 1 and "
    "bits 2, 4, 8 or 16 (e.g. quant.tiers=[[0.1,8],[0.4,4],[0.5,2]]), or null for one precision"
)


class Tier(NamedTuple):
    """A share of each row's kept tokens and the bits it is stored at."""

    share: float
    bits: int


def parse_tiers(value: object, allowed_bits: Sequence[int]) -> tuple[Tier, ...]:
    """``quant.tiers`` as :class:`Tier` s; refuses in one line anything but [share, bits] pairs whose shares sum to 1."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"quant.tiers={value!r} is not a list of [share, bits] pairs", ALLOWED)
    tiers = []
    for index, pair in enumerate(value):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ConfigError(f"quant.tiers[{index}]={pair!r} is not a [share, bits] pair", ALLOWED)
        share, bits = pair
        check_real(f"quant.tiers[{index}] share", share, low=0.0, high=1.0, allowed=ALLOWED)
        if is_real(bits) and not is_int(bits) and float(bits).is_integer():
            bits = int(bits)  # 8.0 from a YAML float
        if not is_int(bits) or bits not in allowed_bits:
            raise ConfigError(f"quant.tiers[{index}] bits={bits!r} is not supported", ALLOWED)
        tiers.append(Tier(float(share), int(bits)))
    total = sum(t.share for t in tiers)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"quant.tiers: the shares sum to {total:g}, not 1", ALLOWED)
    return tuple(tiers)


def mean_bits(tiers: Sequence[Tier]) -> float:
    """Bits per number of a tiered cache, ``sum(share x bits)`` (nominal accounting)."""
    return sum(t.share * t.bits for t in tiers)


def tier_label(tiers: Sequence[Tier]) -> str:
    """How runs name a tiering: ``0.1x8+0.4x4+0.5x2``."""
    return "+".join(f"{t.share:g}x{t.bits}" for t in tiers)


def tier_counts(lengths: torch.Tensor, tiers: Sequence[Tier]) -> list[torch.Tensor]:
    """Tokens of each tier per row, for rows of ``lengths`` kept tokens (they sum to ``lengths``)."""
    bounds = [torch.zeros_like(lengths)]
    cumulative = 0.0
    for index, tier in enumerate(tiers):
        cumulative += tier.share
        if index == len(tiers) - 1:
            bounds.append(lengths)
        else:
            bounds.append(torch.floor(lengths.double() * cumulative + 1e-6).to(lengths.dtype).clamp(max=lengths))
    return [b - a for a, b in zip(bounds, bounds[1:])]


def tier_counts_of(tokens: int, tiers: Sequence[Tier]) -> list[int]:
    """:func:`tier_counts` of one row of ``tokens`` kept tokens."""
    return [int(c) for c in tier_counts(torch.tensor([tokens]), tiers)]


def split_tiers(keep: torch.Tensor, scores: torch.Tensor, tiers: Sequence[Tier]) -> list[torch.Tensor]:
    """The keep mask ``[batch, rows, seq]`` split into one mask per tier: each row's kept tokens ranked by ``scores``
    (higher first; equal scores in position order), the first ones in the first tier."""
    ranked = scores.float().masked_fill(~keep, -math.inf)
    order = ranked.sort(dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(keep.shape[-1], device=keep.device).expand_as(order))
    masks = []
    start = torch.zeros(keep.shape[:-1], dtype=torch.long, device=keep.device)
    for count in tier_counts(keep.sum(-1), tiers):
        end = start + count
        masks.append(keep & (rank >= start.unsqueeze(-1)) & (rank < end.unsqueeze(-1)))
        start = end
    return masks
