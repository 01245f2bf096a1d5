"""SnapKV: the last prompt tokens "vote" for the tokens worth keeping.

Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024. The attention of the
observation window (the last ``window`` queries of the prompt) over the earlier tokens is summed over the
window, smoothed with a 1-D pooling of ``kernel_size`` so that neighbours of important tokens come along, and the
top tokens are kept with the window itself. Defaults as in KVCache-Factory (window 32, kernel 7, max pooling),
the code base the paper used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from qpruning.errors import ConfigError
from qpruning.pruners.base import Pruner, grouped_attention_probs


@dataclass
class SnapKV(Pruner):
    """Observation-window voting with pooling.

    Args:
        window: the observation window, also kept as the most recent tokens.
        kernel_size: the pooling kernel (odd).
        pooling: ``max`` or ``avg``.
    """

    name: ClassVar[str] = "snapkv"
    window: int = 32
    kernel_size: int = 7
    pooling: str = "max"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise ConfigError(f"pruner.window={self.window} leaves {self.name} no observation window", "allowed: window >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"pruner.kernel_size={self.kernel_size} is not allowed", "allowed: a positive odd number")
        if self.pooling not in ("max", "avg"):
            raise ConfigError(f"pruner.pooling={self.pooling!r} is not allowed", "allowed: max or avg")

    @property
    def queries_read(self) -> int | None:
        return self.window  # the observation window (Ada-KV, HeadKV and PyramidKV score as SnapKV does)

    def score(self, query, key, key_valid, scaling):
        batch, q_heads, seq, _ = query.shape
        kv_heads = key.shape[1]
        window = min(self.window, seq)
        prefix = seq - window
        positions = torch.arange(prefix, seq, device=key.device)
        probs = grouped_attention_probs(query[:, :, prefix:], key, scaling, positions, key_valid)
        # As in the reference code, votes and pooling cover the tokens before the window only: the window is
        # kept anyway, and its (large) self-attention must not spill over to its neighbours through pooling.
        votes = probs[..., :prefix].sum(dim=3)  # [batch, kv_heads, group, prefix]
        group = votes.shape[2]
        flat = votes.reshape(batch * kv_heads * group, 1, prefix)
        pad = self.kernel_size // 2
        if prefix == 0:
            pooled = flat
        elif self.pooling == "max":
            pooled = F.max_pool1d(flat, self.kernel_size, stride=1, padding=pad)
        else:
            # count_include_pad as in the reference code: the edges average in zeros.
            pooled = F.avg_pool1d(flat, self.kernel_size, stride=1, padding=pad)
        scores = pooled.view(batch, kv_heads, group, prefix).mean(dim=2)
        forced = torch.full((batch, kv_heads, window), float("inf"), device=key.device)
        return torch.cat([scores, forced], dim=-1)
