"""What every pruner shares: the scoring interface, budgets, and the mechanics of choosing tokens.

A pruner looks at one layer at the end of prefill and decides which tokens each KV head keeps. It is split
into three steps so that methods differ only where they really differ:

1. :meth:`Pruner.layer_tokens` turns the per-layer kept-token counts of the plan into the counts this method
   uses (PyramidKV reshapes them into a pyramid, CAKE spreads them by each layer's :meth:`Pruner.layer_statistic`;
   the others keep them);
2. :meth:`Pruner.score` rates every token of every KV head (higher = more worth keeping), from the layer's
   full-precision queries and keys: pruning sees unquantized states and runs before quantization;
3. :meth:`Pruner.allocate` splits a layer's kept tokens among its heads (uniform here; Ada-KV and HeadKV give
   heads different counts), and :func:`select_tokens` turns scores and counts into a keep mask.

The cache code (:mod:`qpruning.cache.layer`) then cuts and stores what was kept. With grouped-query attention,
scores are computed per query head and averaged over the query heads that share a KV head: the cache is never
expanded to query heads.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from qpruning.errors import check_dataclass_fields, check_int

# The largest attention-probability block (in float32 numbers) a scorer materializes at once: queries are
# processed in chunks so that a 32k-token prompt never needs an L x L matrix per head, and so that one block
# (16 MiB) stays in the CPU's cache while it is masked, normalized and summed (blocks of 1 << 26 numbers, 256 MiB,
# went through main memory at every step: results/core/h2o_prefill.md).
SCORE_BLOCK_NUMBERS = 1 << 22


class Selection(NamedTuple):
    """What a pruner chose in one layer: ``keep`` ``[batch, rows, seq]`` (bool), ``order`` (``None``, or the
    kept positions ``[batch, rows, >= kept]`` in the order the cache stores them; ``None``: position order), and
    the ``scores`` ``[batch, rows, seq]`` it chose by (``None`` where a pruner does not say; precision per token,
    :mod:`qpruning.cache.tiers`, ranks the kept tokens by them)."""

    keep: torch.Tensor
    order: torch.Tensor | None = None
    scores: torch.Tensor | None = None


@dataclass
class Pruner(ABC):
    """Base of all pruners.

    Args:
        window: the last ``window`` prompt tokens are always kept (the paper's Appendix B: 32 for StreamingLLM,
            H2O and SnapKV; 8 for PyramidKV, Ada-KV and HeadKV).
    """

    name: ClassVar[str] = "base"
    window: int = 32

    def __post_init__(self) -> None:
        check_dataclass_fields("pruner", self)  # every field by its annotation: kernel_size=3.5 is refused
        check_int("pruner.window", self.window, minimum=0, meaning="prompt tokens always kept")

    @property
    def prunes(self) -> bool:
        return True

    def min_tokens(self) -> int:
        """The fewest tokens per layer that this pruner accepts (the kept window must fit)."""
        return max(self.window, 1)

    @property
    def queries_read(self) -> int | None:
        """How many of the prompt's last queries :meth:`score` reads (``compat=paper``'s classes too): ``None``
        for all of them (the default: safe for any scorer). A shared prefill (:mod:`qpruning.prefill`) keeps only
        these."""
        return None

    def layer_tokens(
        self, tokens: Sequence[int], seq_len: int, statistics: Sequence[float] | None = None
    ) -> list[int]:
        """Kept tokens per layer (and KV head) for a prompt of ``seq_len`` tokens, from the plan's ``tokens``
        (identity here). ``statistics``: each layer's :meth:`layer_statistic`, given when :attr:`needs_every_layer`
        (``None`` otherwise)."""
        return list(tokens)

    @property
    def needs_every_layer(self) -> bool:
        """Whether :meth:`layer_tokens` needs every layer's :meth:`layer_statistic`: the compressor then compresses
        the layers once the last one's prefill is done (CAKE), instead of each as soon as its own is."""
        return False

    def layer_statistic(
        self, query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor | None, scaling: float
    ) -> float | None:
        """One number describing a layer's attention (same arguments as :meth:`score`), read by
        :meth:`layer_tokens` when :attr:`needs_every_layer`; ``None`` here."""
        return None

    def validate_geometry(self, num_layers: int, q_heads: int, kv_heads: int) -> None:
        """Raise unless this pruner's own per-layer or per-head data fit the model (HeadKV's head scores);
        nothing to check here."""
        return None

    def cache_rows(self, q_heads: int, kv_heads: int) -> int:
        """Rows per layer the pruned cache holds: the KV heads (``compat=paper``'s pruners: the query heads, the
        KV heads repeated before selection as the paper's code does)."""
        return kv_heads

    def keeps_all(self, tokens: int, longest: int) -> bool:
        """Whether a layer given ``tokens`` keeps every token of a prompt whose longest row has ``longest``."""
        return tokens >= longest

    @property
    def keeps_uncut_layers(self) -> bool:
        """Whether a 16-bit layer that keeps every token (and has no padding) stays exactly as the model made it
        (``False``: it is stored as a compressed layer anyway, as ``compat=paper``'s pruners do)."""
        return True

    @abstractmethod
    def score(
        self, query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor | None, scaling: float
    ) -> torch.Tensor:
        """Scores ``[batch, kv_heads, seq]`` (float32, higher = keep) from post-RoPE ``query``
        ``[batch, q_heads, seq, head_dim]`` and ``key`` ``[batch, kv_heads, seq, head_dim]``.

        ``key_valid`` ``[batch, seq]`` marks real (non-padding) tokens, or is ``None`` when nothing is padded.
        """

    def choose(
        self, query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor | None, scaling: float, tokens: int,
        layer_idx: int = 0,
    ) -> Selection:
        """The tokens one layer keeps: :meth:`score`, :meth:`allocate` ``tokens`` among the rows, :meth:`select`
        with the last ``window`` tokens always kept. ``key`` has :meth:`cache_rows` heads."""
        scores = self.score(query, key, key_valid, scaling)
        counts = self.allocate(scores, tokens, key_valid, layer_idx)
        return self.select(scores, counts, key_valid, min(self.window, key.shape[2]))._replace(scores=scores)

    def select(
        self, scores: torch.Tensor, counts: torch.Tensor, key_valid: torch.Tensor | None, window: int
    ) -> Selection:
        """The keep mask from scores and per-row counts (:func:`select_tokens`), in position order."""
        return Selection(select_tokens(scores, counts, key_valid, window))

    def allocate(
        self, scores: torch.Tensor, tokens: int, key_valid: torch.Tensor | None, layer_idx: int = 0
    ) -> torch.Tensor:
        """Tokens each KV head keeps, ``[batch, kv_heads]``: the layer's ``tokens`` for every head, at most the
        row's real tokens."""
        batch, heads, seq = scores.shape
        real = _real_lengths(key_valid, batch, seq, scores.device)
        counts = torch.full((batch, heads), tokens, dtype=torch.long, device=scores.device)
        return torch.minimum(counts, real.unsqueeze(1))

    def describe(self) -> str:
        return f"{self.name}(window={self.window})"


@dataclass
class NoPruner(Pruner):
    """Keep every token (quantization alone, or the uncompressed baseline)."""

    name: ClassVar[str] = "none"
    window: int = 0

    @property
    def prunes(self) -> bool:
        return False

    def min_tokens(self) -> int:
        return 0

    @property
    def queries_read(self) -> int | None:
        return 0

    def score(self, query, key, key_valid, scaling):
        batch, heads, seq, _ = key.shape
        return torch.zeros(batch, heads, seq, dtype=torch.float32, device=key.device)


def _real_lengths(key_valid: torch.Tensor | None, batch: int, seq: int, device) -> torch.Tensor:
    if key_valid is None:
        return torch.full((batch,), seq, dtype=torch.long, device=device)
    return key_valid.sum(-1).long()


def select_tokens(
    scores: torch.Tensor, counts: torch.Tensor, key_valid: torch.Tensor | None, window: int, stable: bool = False
) -> torch.Tensor:
    """The keep mask ``[batch, kv_heads, seq]``: per row, the last ``window`` tokens and then the best-scored
    ones until the row holds ``counts[b, h]`` tokens. Padding is never kept.

    Prompts are left-padded, so the last ``window`` positions are real tokens. ``stable``: equal scores are taken
    in position order (a stable sort; ChunkKV's chunks, whose tokens share one score, stay whole), instead of
    ``topk``'s unspecified order.
    """
    batch, heads, seq = scores.shape
    scores = scores.float().clone()
    if window:
        scores[..., max(seq - window, 0) :] = math.inf
    if key_valid is not None:
        # After the window: a row shorter than the window must not keep the padding in front of it.
        scores.masked_fill_(~key_valid.unsqueeze(1), -math.inf)
    kmax = int(counts.max()) if counts.numel() else 0
    keep = torch.zeros(batch, heads, seq, dtype=torch.bool, device=scores.device)
    if kmax == 0:
        return keep
    if stable:
        top = scores.sort(dim=-1, descending=True, stable=True).indices[..., :kmax]
    else:
        top = scores.topk(kmax, dim=-1).indices
    take = torch.arange(kmax, device=scores.device) < counts.unsqueeze(-1)
    keep.scatter_(-1, top, take)
    return keep


def grouped_attention_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    query_positions: torch.Tensor,
    key_valid: torch.Tensor | None,
) -> torch.Tensor:
    """Causal attention probabilities of some queries over all keys, in float32.

    ``query`` ``[batch, q_heads, n, d]`` sits at absolute ``query_positions`` ``[n]``; ``key`` is
    ``[batch, kv_heads, seq, d]``. Returns ``[batch, kv_heads, group, n, seq]`` where ``group`` is the number
    of query heads sharing a KV head: the cache is never expanded to query heads.
    """
    batch, q_heads, n, d = query.shape
    kv_heads, seq = key.shape[1], key.shape[2]
    group = q_heads // kv_heads
    q = query.float().view(batch, kv_heads, group, n, d)
    logits = torch.matmul(q, key.float().unsqueeze(2).transpose(-1, -2)) * scaling
    allowed = torch.arange(seq, device=key.device).unsqueeze(0) <= query_positions.unsqueeze(1)  # [n, seq]
    allowed = allowed.view(1, 1, 1, n, seq)
    if key_valid is not None:
        allowed = allowed & key_valid.view(batch, 1, 1, 1, seq)
    logits.masked_fill_(~allowed, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if key_valid is not None:
        # A padded query row attends to nothing: its NaNs (softmax of all -inf) become zeros. Without padding
        # every query sees at least itself, so no row is empty.
        probs = torch.nan_to_num_(probs, nan=0.0)
    return probs


def query_chunk_size(batch: int, q_heads: int, seq: int) -> int:
    """Queries per chunk so that one ``[batch, q_heads, chunk, seq]`` block stays under SCORE_BLOCK_NUMBERS."""
    return max(1, min(seq, SCORE_BLOCK_NUMBERS // max(1, batch * q_heads * seq)))
