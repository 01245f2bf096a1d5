"""What a model's attention applies beyond ``softmax(q k^T * scaling) v``, handed to a backend with each call.

transformers' attention functions receive these from the model's attention module with every call (Gemma 2's
``softcap``, gpt-oss's ``s_aux`` sinks); a sliding-window layer's window is the layer's own. The query scaling
(Gemma's ``query_pre_attn_scalar``, Granite's ``attention_multiplier``) is the call's ``scaling`` and needs no
term here; per-layer RoPE bases are applied by the model before the cache sees the keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionTerms:
    """Args:
    softcap: logits become ``softcap * tanh(logits / softcap)`` before the mask (Gemma 2).
    sinks: ``[q_heads]`` learned logits of one extra, value-less key per query head (gpt-oss's attention sinks):
        they take part in the softmax's denominator only.
    window: a query sees itself and the ``window - 1`` tokens before it (a sliding-window layer holding
        consecutive positions); None: every token the layer holds.
    """

    softcap: float | None = None
    sinks: torch.Tensor | None = None
    window: int | None = None

    @property
    def plain(self) -> bool:
        """Nothing beyond plain scaled softmax attention."""
        return self.softcap is None and self.sinks is None and self.window is None

    @classmethod
    def from_call(cls, kwargs: dict, window: int | None = None) -> AttentionTerms:
        """The terms of one attention call from its keyword arguments (``softcap``, ``s_aux``), with ``window``."""
        softcap = kwargs.get("softcap")
        return cls(softcap=float(softcap) if softcap else None, sinks=kwargs.get("s_aux"), window=window)


PLAIN = AttentionTerms()
