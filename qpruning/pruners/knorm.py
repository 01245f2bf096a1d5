"""KNorm: keep the tokens whose keys have the smallest L2 norm.

Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression", EMNLP 2024. A key of low
norm tends to draw high attention, so the key norm alone ranks the tokens: no query and no attention are needed
(``queries_read`` is 0, so a shared prefill keeps no query for it). The last ``window`` tokens are kept as with
every pruner here (8, as in docs/adding-a-pruner.md's worked example; the paper's method itself keeps none:
``pruner.window=0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qpruning.pruners.base import Pruner


@dataclass
class KNorm(Pruner):
    """Scores ``-||k||_2`` per KV head and token (higher = keep). Reads no query."""

    name: ClassVar[str] = "knorm"
    window: int = 8

    @property
    def queries_read(self) -> int | None:
        return 0  # keys only

    def score(self, query, key, key_valid, scaling):
        return -key.float().norm(dim=-1)  # [batch, kv_heads, seq]
