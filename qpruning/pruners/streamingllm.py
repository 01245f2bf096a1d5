"""StreamingLLM: attention sinks plus a recent window.

Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024. The first tokens of a
sequence receive attention out of proportion to their content ("attention sinks"); keeping them with a window
of recent tokens preserves fluency. The paper under study (Appendix B) keeps the last 32 tokens and, as in the
KVCache-Factory / QPruningKV code it used, gives the rest of the budget to the first tokens of the prompt.
``sinks=4`` gives the original method instead: 4 sink tokens and the most recent tokens for the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from qpruning.errors import ConfigError
from qpruning.pruners.base import Pruner


@dataclass
class StreamingLLM(Pruner):
    """Keep the first tokens and the last ``window`` tokens; the scores depend on positions only.

    Args:
        window: recent tokens always kept.
        sinks: ``None`` (the paper's code): every token of the budget beyond the window goes to the start of the
            prompt. An integer: that many sink tokens, then the most recent tokens (the original StreamingLLM).
    """

    name: ClassVar[str] = "streamingllm"
    window: int = 32
    sinks: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sinks is not None and self.sinks < 0:
            raise ConfigError(f"pruner.sinks={self.sinks} is negative", "allowed: sinks >= 0 or null")

    @property
    def queries_read(self) -> int | None:
        return 0  # positions only

    def score(self, query, key, key_valid, scaling):
        batch, heads, seq, _ = key.shape
        positions = torch.arange(seq, device=key.device, dtype=torch.float32).expand(batch, seq)
        if key_valid is not None:
            # Left padding: count positions from each row's first real token.
            first = (~key_valid).sum(-1, keepdim=True).float()
            positions = positions - first
        if self.sinks is None:
            scores = -positions
        else:
            scores = torch.where(positions < self.sinks, torch.full_like(positions, math.inf), positions)
        return scores.unsqueeze(1).expand(batch, heads, seq).contiguous()
