"""TOVA: the last query's attention decides which tokens stay.

Oren et al., "Transformers are Multi-State RNNs", EMNLP 2024 (Token Omission Via Attention). A token's score is the
attention the prompt's last query pays it (the causal softmax over the keys), per query head, averaged over the
query heads that share a KV head, as the other pruners here do with grouped-query attention (the paper's code
averages over all the heads of a layer; here each KV head chooses its own tokens). Only the last query is read
(``queries_read`` is 1). ``window`` defaults to 1: the last token is always kept, as kvpress's TOVAPress does (its
own attention weight is usually the largest anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from qpruning.pruners.base import Pruner, grouped_attention_probs


@dataclass
class TOVA(Pruner):
    """The last prompt query's attention over the keys, averaged over the query heads of each KV head."""

    name: ClassVar[str] = "tova"
    window: int = 1

    @property
    def queries_read(self) -> int | None:
        return 1  # the last query

    def score(self, query, key, key_valid, scaling):
        seq = query.shape[2]
        last = torch.arange(seq - 1, seq, device=key.device)
        probs = grouped_attention_probs(query[:, :, seq - 1 :], key, scaling, last, key_valid)
        return probs[:, :, :, 0].mean(dim=2)  # [batch, kv_heads, seq]
