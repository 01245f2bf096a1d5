"""``compat=paper``'s pruners: what the code of the paper under study computed (GitHub ``zhzihao/QPruningKV``,
``pyramidkv/pyramidkv_utils.py``, the ``*KVCluster.update_kv`` methods), one subclass per method, chosen once
(:func:`qpruning.compat.paper_pruner`), as :func:`qpruning.cache.hqq_cache.paper_quantizer` swaps the quantizer.

What they share (:class:`PaperMode`):

- the KV heads are repeated to the query heads before selection: every query head keeps its own tokens and the
  cache holds ``q_heads`` rows (:meth:`PaperMode.cache_rows`);
- selection as the code calls ``topk``: ``topk(capacity - window)`` on the scores of the tokens *before* the
  window, the window appended after them (not the window's scores set to ``+inf`` and ``topk(capacity)`` on the
  whole row, which keeps other members of a plateau of tied scores); the cache holds the kept tokens in that
  order (``topk``'s, then the window): :func:`paper_select`;
- a prompt of exactly ``capacity`` tokens goes through that selection too (the code keeps a prompt whole only
  when it is *shorter* than the capacity), so its cache order is ``topk``'s (:meth:`PaperMode.keeps_all`);
- a layer is always stored as a compressed layer, even when nothing is cut.

SnapKV, PyramidKV and H2O score as the code does, in the model's dtype: the logits of the query and key dtype
divided by ``sqrt(head_dim)``, the softmax in float32 cast back to that dtype, the votes summed and (SnapKV,
PyramidKV) pooled in it, so a float16 model's scores are float16 numbers before ``topk``, as in the code.
StreamingLLM's positions need no scores. Ada-KV and HeadKV are not in that code (``compat=paper`` refuses them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qpruning.errors import ConfigError
from qpruning.pruners.base import Pruner, Selection, query_chunk_size
from qpruning.pruners.h2o import H2O
from qpruning.pruners.pyramidkv import PyramidKV
from qpruning.pruners.snapkv import SnapKV
from qpruning.pruners.streamingllm import StreamingLLM


def paper_select(scores: torch.Tensor, counts: torch.Tensor, key_valid: torch.Tensor | None, window: int) -> Selection:
    """The paper code's selection: per row, ``topk(counts - window)`` of the scores before the last ``window``
    positions (``topk``'s defaults: largest, sorted), then the window. ``order``: the kept positions in that
    order, the cache's. Padding (``key_valid``) is never selected."""
    batch, heads, seq = scores.shape
    prefix = seq - window
    earlier = scores[..., :prefix]
    if key_valid is not None:
        earlier = earlier.masked_fill(~key_valid[:, None, :prefix], -math.inf)
    picks = max(min(int(counts.max()) - window, prefix), 0) if counts.numel() else 0
    top = earlier.contiguous().topk(picks, dim=-1).indices
    take = torch.arange(picks, device=scores.device) < (counts - window).unsqueeze(-1)
    keep = torch.zeros(batch, heads, seq, dtype=torch.bool, device=scores.device)
    keep.scatter_(-1, top, take)
    keep[..., prefix:] = True
    if key_valid is not None:
        keep &= key_valid.unsqueeze(1)
    recent = torch.arange(prefix, seq, device=scores.device).expand(batch, heads, window)
    return Selection(keep, torch.cat([top, recent], dim=-1))


def paper_scaled(logits: torch.Tensor, scaling: float, head_dim: int) -> torch.Tensor:
    """Logits scaled as the code scales them, divided by ``sqrt(head_dim)`` (the models it ran scale by
    ``head_dim ** -0.5``); multiplied by the model's ``scaling`` for a model that scales otherwise."""
    return logits / math.sqrt(head_dim) if scaling == head_dim**-0.5 else logits * scaling


def paper_window_votes(query, key, key_valid, scaling: float, window: int, kernel_size: int, pooling: str):
    """SnapKV's scores as the code computes them, ``[batch, heads, seq]`` in the inputs' dtype: the last ``window``
    queries' attention (causal inside the window block) summed over those queries for each earlier token, pooled
    (stride 1, ``kernel_size // 2`` padding) over the earlier tokens; the window's own scores are ``+inf``.
    ``query`` and ``key`` have the same heads (the keys repeated)."""
    batch, heads, seq, head_dim = query.shape
    prefix = seq - window
    logits = paper_scaled(torch.matmul(query[..., prefix:, :], key.transpose(2, 3)), scaling, head_dim)
    blocked = torch.zeros(window, seq, dtype=torch.bool, device=key.device)
    blocked[:, prefix:] = torch.ones(window, window, dtype=torch.bool, device=key.device).triu(1)
    blocked = blocked.view(1, 1, window, seq)
    if key_valid is not None:
        blocked = blocked | ~key_valid.view(batch, 1, 1, seq)
    probs = torch.softmax(logits.masked_fill(blocked, -math.inf), dim=-1, dtype=torch.float32).to(query.dtype)
    votes = probs[..., :prefix].sum(dim=-2)
    if prefix:
        pool = F.max_pool1d if pooling == "max" else F.avg_pool1d
        votes = pool(votes, kernel_size=kernel_size, padding=kernel_size // 2, stride=1)
    forced = torch.full((batch, heads, window), math.inf, dtype=votes.dtype, device=key.device)
    return torch.cat([votes, forced], dim=-1)


def paper_h2o_scores(query, key, key_valid, scaling: float, window: int) -> torch.Tensor:
    """Attention summed over every prompt query, ``[batch, heads, seq]``, with the code's H2O mask (query ``i``
    sees key ``j`` unless both are in the last ``window`` tokens and ``j > i``: the queries before the window see
    later keys too). The logits in the inputs' dtype, the softmax in float32 cast back to it (as the code does);
    the sum over query chunks accumulates in float32 and ends in the inputs' dtype. ``query`` and ``key`` have
    the same heads. Padding keys are masked and padding queries add nothing."""
    batch, heads, seq, head_dim = query.shape
    total = torch.zeros(batch, heads, seq, dtype=torch.float32, device=key.device)
    keys = key.transpose(-1, -2)
    columns = torch.arange(seq, device=key.device)
    chunk = query_chunk_size(batch, heads, seq)
    for start in range(0, seq, chunk):
        stop = min(seq, start + chunk)
        rows = torch.arange(start, stop, device=key.device).unsqueeze(1)
        blocked = (rows >= seq - window) & (columns.unsqueeze(0) > rows)  # [n, seq]
        blocked = blocked.view(1, 1, stop - start, seq)
        if key_valid is not None:
            blocked = blocked | ~key_valid.view(batch, 1, 1, seq)
        logits = paper_scaled(torch.matmul(query[:, :, start:stop], keys), scaling, head_dim)
        probs = torch.softmax(logits.masked_fill(blocked, -math.inf), dim=-1, dtype=torch.float32).to(query.dtype)
        probs = probs.float()
        if key_valid is not None:
            probs = torch.nan_to_num(probs, nan=0.0) * key_valid[:, start:stop].view(batch, 1, -1, 1)
        total += probs.sum(dim=2)
    return total.to(query.dtype)


class PaperMode:
    """What every ``compat=paper`` pruner does differently (a mixin before the method's class)."""

    def cache_rows(self, q_heads: int, kv_heads: int) -> int:
        return q_heads

    def keeps_all(self, tokens: int, longest: int) -> bool:
        return tokens > longest

    @property
    def keeps_uncut_layers(self) -> bool:
        return False

    def select(self, scores, counts, key_valid, window) -> Selection:
        return paper_select(scores, counts, key_valid, window)


@dataclass
class PaperStreamingLLM(PaperMode, StreamingLLM):
    """StreamingLLM as the code keeps it: the first tokens and the window, in position order."""

    def select(self, scores, counts, key_valid, window) -> Selection:
        return Pruner.select(self, scores, counts, key_valid, window)


@dataclass
class PaperH2O(PaperMode, H2O):
    """H2O with the code's mask (``H2OKVCluster``): see :func:`paper_h2o_scores`."""

    def score(self, query, key, key_valid, scaling):
        return paper_h2o_scores(query, key, key_valid, scaling, min(self.window, key.shape[2]))


@dataclass
class PaperSnapKV(PaperMode, SnapKV):
    """SnapKV as ``SnapKVCluster``: see :func:`paper_window_votes`."""

    def score(self, query, key, key_valid, scaling):
        window = min(self.window, key.shape[2])
        return paper_window_votes(query, key, key_valid, scaling, window, self.kernel_size, self.pooling)


@dataclass
class PaperPyramidKV(PaperMode, PyramidKV):
    """PyramidKV as ``PyramidKVCluster``: SnapKV's scores and the code's integer-step layer budgets."""

    def score(self, query, key, key_valid, scaling):
        window = min(self.window, key.shape[2])
        return paper_window_votes(query, key, key_valid, scaling, window, self.kernel_size, self.pooling)

    def layer_tokens(
        self, tokens: Sequence[int], seq_len: int, statistics: Sequence[float] | None = None
    ) -> list[int]:
        """The layer budgets of the code: with ``S = C - window``, a prompt shorter than ``C`` is kept whole, one
        shorter than ``2S`` keeps ``C`` in every layer; otherwise the top layer selects ``lo = S // beta``, the
        bottom ``hi = 2S - lo`` (capped at ``seq_len - window``, ``lo = 2S - hi``), and layer ``l`` selects
        ``hi - l * ((hi - lo) // (N - 1))``: an integer step, so the total exceeds the uniform one by less than
        ``N(N-1)/2``. Uniform plans only (the code has no others)."""
        num_layers = len(tokens)
        if num_layers < 2:
            raise ConfigError("compat=paper: the paper's PyramidKV divides by num_layers - 1 (a 1-layer model)",
                              "allowed: a model of 2 layers or more, or compat=methods")
        if len(set(tokens)) > 1:
            raise ConfigError("compat=paper: the paper's PyramidKV has no layer-wise budgets (layers=...)",
                              "allowed: one budget for every layer, or compat=methods")
        budget = tokens[0]
        selected = budget - self.window
        if seq_len < budget or seq_len < 2 * selected:
            self.last_schedule = {"mode": "no-pruning" if seq_len < budget else "uniform-fallback", "seq_len": seq_len}
            return list(tokens)
        low = selected // self.beta
        high = 2 * selected - low
        if high >= seq_len - self.window:
            high = seq_len - self.window
            low = 2 * selected - high
        step = (high - low) // (num_layers - 1)
        schedule = [high - layer * step for layer in range(num_layers)]
        self.last_schedule = {"mode": "paper", "seq_len": seq_len, "selected": schedule}
        return [self.window + s for s in schedule]


# The method's class -> its compat=paper class (NoPruner keeps every token either way).
PAPER_CLASSES: dict[type[Pruner], type[Pruner]] = {
    StreamingLLM: PaperStreamingLLM, H2O: PaperH2O, SnapKV: PaperSnapKV, PyramidKV: PaperPyramidKV,
}
