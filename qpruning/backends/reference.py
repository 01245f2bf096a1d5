"""The PyTorch reference backend: exact attention over a compressed layer's segments (float32 math)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import torch

from qpruning.cache.segments import Segment, gather_rows
from qpruning.cache.terms import PLAIN, AttentionTerms

_local = threading.local()


def workspace(device: torch.device) -> Callable[[int], torch.Tensor]:
    """A function ``n -> float32 buffer of at least n numbers`` on ``device``: this thread's scratch buffer for
    the dequantized rows of one attention call, reused by every layer and step (it is not part of any cache: the
    cache keeps only its packed codes, scales and zeros). Grown as needed, by a quarter more than asked."""
    buffers = _local.__dict__.setdefault("buffers", {})
    key = (torch.device(device), torch.is_inference_mode_enabled())

    def buffer(n: int) -> torch.Tensor:
        current = buffers.get(key)
        if current is None or current.numel() < n:
            current = torch.empty(n + n // 4, dtype=torch.float32, device=device)
            buffers[key] = current
        return current

    return buffer


def reference_attention(
    segments: Sequence[Segment], query: torch.Tensor, scaling: float, terms: AttentionTerms = PLAIN
) -> torch.Tensor:
    """Exact attention of ``query`` ``[batch, q_heads, q, head_dim]`` over ``segments`` (a compressed layer's, in
    token order, the ``q`` new tokens at the end of every row) through dequantized, padded rows (float32 math).
    When no row is padded, the rows are dequantized in place into this thread's scratch buffer (:func:`workspace`).
    ``terms`` (:class:`~qpruning.cache.terms.AttentionTerms`) adds what the model's attention applies: logit
    soft-capping, attention sinks, a sliding window over the row's last tokens.
    Returns ``[batch, q, q_heads, head_dim]`` in ``query.dtype``."""
    batch, q_heads, q_len, head_dim = query.shape
    rows = segments[0].rows
    heads = rows // batch
    group = q_heads // heads
    keys, values, valid, lengths = gather_rows(
        segments, torch.float32, rows, head_dim, query.device, workspace=workspace(query.device)
    )
    seq = keys.shape[1]
    # The group's query heads and new tokens become the rows of one matrix per KV head, so that keys and values
    # are read as they lie (broadcasting them over the group would copy them group times per call).
    keys = keys.view(batch, heads, seq, head_dim)
    values = values.view(batch, heads, seq, head_dim)
    q = query.float().reshape(batch, heads, group * q_len, head_dim)
    logits = torch.matmul(q, keys.transpose(-1, -2)).mul_(scaling)  # [batch, heads, group * q, seq]
    if terms.softcap is not None:
        logits = logits.div_(terms.softcap).tanh_().mul_(terms.softcap)
    window = terms.window if terms.window is not None and terms.window < seq + 1 else None
    if q_len > 1 or valid is not None or window is not None:
        # The q new tokens are the last q of every row; new token j is visible to query i when j <= i.
        position = torch.arange(seq, device=query.device).view(1, seq)
        new_index = position - (lengths.view(-1, 1) - q_len)  # [rows, seq]
        query_index = torch.arange(q_len, device=query.device).view(1, 1, 1, q_len, 1)
        allowed = new_index.view(batch, heads, 1, 1, seq) <= query_index
        if window is not None:
            # A row holds consecutive positions: query i sees itself and the window - 1 tokens before it.
            allowed = allowed & (new_index.view(batch, heads, 1, 1, seq) > query_index - window)
        if valid is not None:
            allowed = allowed & valid.view(batch, heads, 1, 1, seq)
        logits = logits.view(batch, heads, group, q_len, seq).masked_fill(~allowed, -math.inf)
        logits = logits.view(batch, heads, group * q_len, seq)
    if terms.sinks is not None:
        # One value-less key per query head: its logit joins the softmax's denominator only.
        sinks = terms.sinks.float().view(1, heads, group, 1, 1).expand(batch, heads, group, q_len, 1)
        logits = torch.cat([logits, sinks.reshape(batch, heads, group * q_len, 1)], dim=-1)
        probs = torch.softmax(logits, dim=-1)[..., :seq]
    else:
        probs = torch.softmax(logits, dim=-1)
    out = torch.matmul(probs, values)  # [batch, heads, group * q, head_dim]
    return out.view(batch, q_heads, q_len, head_dim).transpose(1, 2).to(query.dtype)
