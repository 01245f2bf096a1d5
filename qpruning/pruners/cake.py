"""CAKE: the budget spread over layers by each layer's attention, and tokens chosen by mean and variance.

Qin et al., "CAKE: Cascading and Adaptive KV Cache Eviction with Layer Preferences", ICLR 2025. Two ideas:

- **Layer budgets from layer preferences.** From the attention of the observation window (the last ``window``
  prompt queries) over the tokens before it, each layer gets a preference ``P = H ** (1 / tau1) * V ** (1 / tau2)``:
  ``H`` is the attention's entropy (spatial dispersion: attention spread over many tokens wants more of them) and
  ``V`` the variance over the window's queries (temporal shift: attention that moves from query to query wants
  more), each summed over heads, queries and tokens. The layers' selected tokens (beyond the window) are then spread
  in proportion to ``P``, the layer-budget counterpart of PyramidKV's fixed pyramid.
- **An eviction indicator with time in it.** A token's score is the mean of the window's attention to it plus
  ``gamma`` times its variance over the window's queries (a token some queries need badly counts even when others
  ignore it), smoothed by average pooling of ``kernel_size``, per query head, averaged over the query heads of each
  KV head.

How it runs here: a layer's budget depends on every layer's preference, so a compressor with this pruner keeps each
layer as prefill made it (the full 16-bit prompt cache, which the model's own cache holds at the end of prefill
anyway) and compresses every layer once the last one is done (:attr:`needs_every_layer`; the in-line prefill, a
shared prefill and ``optimize`` do the same). The paper's "cascading" evicts during prefill to bound that peak; the
final cache is the same, because each layer's scores are fixed once computed and budgets only shrink as layers
arrive. Spreading: layer ``l`` gets ``s_l * P_l / mean(P)`` selected tokens (``s_l``: its planned selected
tokens; with one plan for all layers, the shares are ``P_l / sum(P)`` of the total), capped at the prompt (what a
capped layer cannot use goes to the others in proportion to their shares), rounded so the total is kept. With
layer-wise plans (``layers=``), a layer's bytes, not its tokens, follow its preference. Every layer keeps at least
its window. Defaults: window 32 and kernel 5 (the official code), ``gamma`` 200 (the paper), ``tau1 = tau2 = 1``
(the official code tunes them per model and budget, e.g. 1.6 and 0.4 for Llama-3.1-8B at 1024 tokens).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from qpruning.errors import ConfigError, check_int, check_real
from qpruning.pruners.base import Pruner, grouped_attention_probs
from qpruning.pruners.pyramidkv import largest_remainder_round

logger = logging.getLogger(__name__)


@dataclass
class CAKE(Pruner):
    """Layer budgets from each layer's window-attention entropy and variance; tokens by mean + gamma * variance.

    Args:
        window: the observation window, also kept as the most recent tokens.
        kernel_size: the average pooling of the token scores (odd).
        gamma: the weight of the variance in a token's score.
        tau1: the temperature of the entropy in a layer's preference.
        tau2: the temperature of the variance in a layer's preference.
    """

    name: ClassVar[str] = "cake"
    window: int = 32
    kernel_size: int = 5
    gamma: float = 200.0
    tau1: float = 1.0
    tau2: float = 1.0
    last_schedule: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise ConfigError(f"pruner.window={self.window} leaves cake no observation window", "allowed: window >= 1")
        check_int("pruner.kernel_size", self.kernel_size, minimum=1, meaning="the pooling kernel, an odd number")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"pruner.kernel_size={self.kernel_size} is even", "allowed: a positive odd number")
        check_real("pruner.gamma", self.gamma, low=0.0, low_open=False, meaning="the variance's weight, finite")
        for key, value in (("pruner.tau1", self.tau1), ("pruner.tau2", self.tau2)):
            check_real(key, value, low=0.0, meaning="a temperature, finite")
        for key, value in (("pruner.gamma", self.gamma), ("pruner.tau1", self.tau1), ("pruner.tau2", self.tau2)):
            if not math.isfinite(value):
                raise ConfigError(f"{key}={value} is not finite", "allowed: a finite number")

    @property
    def queries_read(self) -> int | None:
        return self.window

    @property
    def needs_every_layer(self) -> bool:
        return True

    def _window_probs(self, query, key, key_valid, scaling) -> tuple[torch.Tensor, int]:
        """The window's attention ``[batch, kv_heads, group, window, prefix]`` over the tokens before it."""
        seq = query.shape[2]
        window = min(self.window, seq)
        prefix = seq - window
        positions = torch.arange(prefix, seq, device=key.device)
        probs = grouped_attention_probs(query[:, :, prefix:], key, scaling, positions, key_valid)
        return probs[..., :prefix], window

    @staticmethod
    def _variance(probs: torch.Tensor) -> torch.Tensor:
        """Variance over the window's queries (dim 3), unbiased as the official code's; zero for one query."""
        if probs.shape[3] < 2:
            return torch.zeros_like(probs[:, :, :, 0])
        return probs.var(dim=3)

    def score(self, query, key, key_valid, scaling):
        batch, kv_heads = key.shape[0], key.shape[1]
        probs, window = self._window_probs(query, key, key_valid, scaling)
        prefix = probs.shape[-1]
        indicator = probs.mean(dim=3) + self.gamma * self._variance(probs)  # [batch, kv_heads, group, prefix]
        group = indicator.shape[2]
        if prefix:
            pad = self.kernel_size // 2
            # count_include_pad, as the official code: the edges average in zeros
            flat = F.avg_pool1d(indicator.reshape(-1, 1, prefix), self.kernel_size, stride=1, padding=pad)
            indicator = flat.view(batch, kv_heads, group, prefix)
        scores = indicator.mean(dim=2)
        forced = torch.full((batch, kv_heads, window), math.inf, device=key.device)
        return torch.cat([scores, forced], dim=-1)

    def layer_statistic(self, query, key, key_valid, scaling) -> float:
        """The layer's preference ``H ** (1 / tau1) * V ** (1 / tau2)`` (summed over the batch, as the official
        code's)."""
        probs, _ = self._window_probs(query, key, key_valid, scaling)
        entropy = float((-(probs * torch.log(probs + 1e-10)).sum()).clamp(min=0))
        variance = float(self._variance(probs).sum().clamp(min=0))
        try:  # in float64: a small temperature must not overflow to inf or underflow to 0 in float32
            return entropy ** (1 / self.tau1) * variance ** (1 / self.tau2)
        except OverflowError:
            return math.inf

    def layer_tokens(
        self, tokens: Sequence[int], seq_len: int, statistics: Sequence[float] | None = None
    ) -> list[int]:
        window = min(self.window, seq_len)
        if sum(tokens) >= len(tokens) * seq_len:
            self.last_schedule = {"mode": "no-pruning", "seq_len": seq_len}
            return list(tokens)
        if statistics is None:
            self.last_schedule = {"mode": "uniform", "seq_len": seq_len}
            return list(tokens)
        if len(statistics) != len(tokens):
            raise ValueError(f"cake: {len(statistics)} layer preferences for {len(tokens)} layers")
        selected = [max(t - window, 0) for t in tokens]
        if any(math.isinf(p) and p > 0 for p in statistics):  # overflowed: those layers share what they want
            statistics = [1.0 if math.isinf(p) and p > 0 else 0.0 for p in statistics]
        prefs = [p if math.isfinite(p) and p > 0 else 0.0 for p in statistics]
        mean_pref = sum(prefs) / len(prefs)
        if mean_pref <= 0:
            logger.info("cake: every layer's preference is 0 (prompt of %d tokens): uniform layer budgets", seq_len)
            self.last_schedule = {"mode": "uniform", "seq_len": seq_len}
            return list(tokens)
        shares = [s * p / mean_pref for s, p in zip(selected, prefs)]
        spread = fill_with_caps(shares, seq_len - window)
        schedule = largest_remainder_round(spread, int(round(sum(spread))))
        self.last_schedule = {"mode": "preference", "seq_len": seq_len, "selected": schedule,
                              "preferences": list(statistics)}
        return [window + s for s in schedule]


def fill_with_caps(shares: Sequence[float], cap: float) -> list[float]:
    """``shares`` with none above ``cap``: what a capped entry loses goes to the uncapped ones in proportion to
    their shares, repeated until nothing is over (the total is kept while it fits ``len(shares) * cap``)."""
    out = [min(s, cap) for s in shares]
    while True:
        excess = sum(shares) - sum(out)
        free = [i for i, v in enumerate(out) if v < cap]
        weight = sum(out[i] for i in free)
        if excess <= 1e-9 or not free or weight <= 0:
            return out
        grown = [min(cap, out[i] * (1 + excess / weight)) for i in free]
        if all(abs(g - out[i]) < 1e-12 for g, i in zip(grown, free)):
            return out
        for g, i in zip(grown, free):
            out[i] = g
