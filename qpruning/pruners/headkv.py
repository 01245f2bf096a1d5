"""HeadKV: per-head budgets from head importance scores, one budget pool shared by all heads of the model.

Fu et al., "Not All Heads Matter: A Head-Level KV Cache Compression Method with Integrated Retrieval and
Reasoning", ICLR 2025 (arXiv:2410.19258); reference code FYYFU/HeadKV (``ReasonSnapKVCluster``), also in
KVCache-Factory, the code base of the paper under study.

1. Importance: a score per attention head, estimated once per model with a needle-retrieval probe
   (``scripts/compute_head_scores.py``; HeadKV-R2's retrieval-reasoning heads by default). A scores file maps
   ``"layer-head"`` to a list of per-probe scores; each head's score is the mean of its list. The scores are
   L1-normalized over all heads of the model, raised to the power ``temperature`` and normalized again (the
   reference code's ``temp``, 1 by default): a distribution ``S`` over (layer, head).
2. Allocation (the paper's Eq. 4): every head starts from the base budget ``b = budget - window`` and gives up
   ``b // beta`` of it to a pool shared by the whole model, ``B = (b // beta) * L * H``; head ``h`` then keeps
   ``b - b // beta + S_h * B`` selected tokens, plus the window. A larger ``beta`` means a smaller pool (closer to
   uniform budgets); the paper picks ``beta`` from {1.005, 1.01, 1.1, 1.2, 1.5, 2, 5, 10}; the default here is
   KVCache-Factory's 1.01. With layer-wise budgets (Figure 9's configurations) each layer gives up ``b_l // beta``
   of its own base budget and keeps ``b_l - b_l // beta`` per head.
3. Selection: SnapKV's scores within each head (window 8 as in the paper under study, kernel 7, max pooling).

GQA: the published scores are per query head, the cache is per KV head (never expanded to query heads). The
budget of a KV head is the sum of the budgets its query heads would get: query head ``q`` belongs to KV head
``q // group`` (transformers' ``repeat_kv`` layout), so ``S`` is summed over each group (summing or averaging
gives the same allocation once normalized) and the pool is ``(b // beta) * L * H_kv``.

Two details differ from the reference code, both so that the cache holds exactly the budget:

- rounding: the reference rounds each head's budget on its own, so the model's total can be off by a few
  tokens; here budgets are rounded by largest remainder over all heads of the model, so that they sum to
  ``L * H_kv * b`` exactly;
- prompts shorter than a head's budget: the reference code slices the sorted indices, so a head whose budget
  exceeds the prompt keeps the whole prompt and the rest of its budget is lost. With ``redistribute=True``
  (default) that excess goes back to the heads that can still use it, in proportion to their importance (water
  filling), so the total is kept; ``redistribute=False`` loses it, as the reference does. Layers whose budget is
  at least the prompt keep every token (as for every pruner) and take no part in the pool.

The budget is a mean per (layer, KV head), as for every pruner (``tokens`` / ``budget``), but only over the whole
model: HeadKV's layers hold different numbers of tokens.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from qpruning.errors import ConfigError, DataError, MissingFileError, is_real
from qpruning.head_scores import SCORES_DIR, shipped_models, shipped_path
from qpruning.pruners.base import _real_lengths
from qpruning.pruners.snapkv import SnapKV

logger = logging.getLogger(__name__)

SCORES_FORMAT = "qpruning-head-scores/1"
_KEY = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


@dataclass(frozen=True)
class HeadScores:
    """Per-head importance of a model: ``matrix`` ``[layers, heads]`` (float64, the mean of each head's list)."""

    matrix: torch.Tensor
    source: str
    meta: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.matrix.shape[0]

    @property
    def num_heads(self) -> int:
        return self.matrix.shape[1]

    def distribution(self, temperature: float = 1.0) -> torch.Tensor:
        """``S``: L1-normalized, raised to ``temperature``, normalized again (the reference code's steps)."""
        total = self.matrix.sum()
        if not total > 0:
            raise DataError(f"head scores in {self.source} are all zero: they cannot allocate a budget")
        s = (self.matrix / total).pow(temperature)
        return s / s.sum()


def load_head_scores(path: str | os.PathLike) -> HeadScores:
    """Read a head-scores file: the published HeadKV format (one JSON object ``{"layer-head": [scores...]}``,
    e.g. ``Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json``) or qpruning's own (the same mapping under
    ``"scores"``, with metadata; written by ``scripts/compute_head_scores.py``). A value may be a list (its mean is
    used; an empty list counts as 0) or a number."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"pruner.head_scores={path} does not exist", "allowed: a head-scores JSON file")
    text = path.read_text(encoding="utf-8").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # The published files are read with json.loads(file.readline()): accept a first-line object too.
        try:
            data = json.loads(text.splitlines()[0]) if text else None
        except json.JSONDecodeError as exc:
            raise DataError(f"head scores file {path} is not JSON (line 1, column {exc.colno}: {exc.msg})",
                            "allowed: a JSON object {'layer-head': [scores]}") from None
    meta: dict = {}
    if isinstance(data, dict) and isinstance(data.get("scores"), dict):
        meta = {k: v for k, v in data.items() if k != "scores"}
        data = data["scores"]
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path} is not a head-scores file: expected a JSON object {{'layer-head': [scores]}}")
    entries: dict[tuple[int, int], float] = {}
    for key, value in data.items():
        match = _KEY.match(str(key))
        if match is None:
            raise DataError(f"{path}: key {key!r} is not 'layer-head' (e.g. '0-3')")
        if isinstance(value, (list, tuple)):
            numbers = [v for v in value if is_real(v)]
            if len(numbers) != len(value):
                raise DataError(f"{path}: head {key} has a score that is not a number", "allowed: numbers >= 0")
            score = sum(numbers) / len(numbers) if numbers else 0.0
        elif is_real(value):
            score = float(value)
        else:
            raise DataError(f"{path}: head {key} has score {value!r}, not a number", "allowed: numbers >= 0")
        if not math.isfinite(score) or score < 0:
            raise DataError(f"{path}: head {key} has score {score}; scores must be finite and >= 0")
        entries[(int(match.group(1)), int(match.group(2)))] = score
    layers = max(layer for layer, _ in entries) + 1
    heads = max(head for _, head in entries) + 1
    missing = [f"{layer}-{head}" for layer in range(layers) for head in range(heads) if (layer, head) not in entries]
    if missing:
        raise DataError(
            f"{path}: scores for {len(missing)} of {layers} x {heads} heads are missing (e.g. {missing[:4]})"
        )
    matrix = torch.zeros(layers, heads, dtype=torch.float64)
    for (layer, head), score in entries.items():
        matrix[layer, head] = score
    return HeadScores(matrix=matrix, source=str(path), meta=meta)


def resolve_scores_path(head_scores: str | None, model_name: str | None) -> Path:
    """The scores file: ``head_scores`` when given, else the file shipped for ``model_name``; a clear error
    saying where it looked otherwise."""
    if head_scores:
        path = Path(head_scores).expanduser()
        if not path.is_file():
            raise MissingFileError(
                f"headkv: pruner.head_scores={head_scores} does not exist",
                "allowed: a scores file (the published HeadKV files such as "
                "Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json work as they are) or one computed with "
                "scripts/compute_head_scores.py",
            )
        return path
    looked = shipped_path(model_name) if model_name else None
    if looked is not None and looked.is_file():
        return looked
    shipped = ", ".join(shipped_models()) or "none"
    where = f"looked for {looked}" if looked is not None else f"no model name to look for in {SCORES_DIR}"
    raise MissingFileError(
        f"headkv needs head importance scores for model {model_name!r}: pruner.head_scores is not set and no "
        f"scores file ships for it ({where}; shipped: {shipped}). Either set pruner.head_scores=/path/to/scores.json "
        "(e.g. the published Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json or "
        "Mistral-7B-Instruct-v0.2_retrieval_reasoning_heads.json from FYYFU/HeadKV), or compute one: "
        f"python scripts/compute_head_scores.py --model {model_name or '<model>'} --out scores.json"
    )


def round_to_total(values: torch.Tensor, total: int) -> torch.Tensor:
    """Largest-remainder rounding of non-negative ``values`` (any shape) to integers that sum to ``total``."""
    flat = values.reshape(-1).double()
    floors = torch.floor(flat)
    missing = int(total - int(floors.sum().item()))
    frac = flat - floors
    order = torch.argsort(-frac, stable=True)
    out = floors.long()
    if missing > 0:
        out[order[: min(missing, out.numel())]] += 1
    elif missing < 0:  # float error only: take back from the smallest fractions
        out[order.flip(0)[: -missing]] -= 1
    return out.reshape(values.shape)


def allocate_head_budgets(
    importance: torch.Tensor,
    selected: list[int],
    beta: float,
    cap: int | None = None,
    redistribute: bool = True,
) -> torch.Tensor:
    """Selected (non-window) tokens per head, ``[layers, heads]``, by HeadKV's Eq. 4.

    Args:
        importance: the distribution ``S`` over ``[layers, heads]`` (sums to 1).
        selected: the base budget ``b_l = budget_l - window`` of each layer.
        beta: the pool parameter: each head gives ``b_l // beta`` to the shared pool.
        cap: the most tokens a head can select (the prompt minus the window), or ``None``.
        redistribute: give the budget a head cannot use (above ``cap``) to the others, by importance.
    """
    layers, heads = importance.shape
    if len(selected) != layers:
        raise ValueError(f"{len(selected)} layer budgets for scores of {layers} layers")
    base = torch.tensor([float(b) for b in selected], dtype=torch.float64)
    given = torch.tensor([float(b // beta) for b in selected], dtype=torch.float64)  # the reference's b // beta
    minimum = (base - given).unsqueeze(1).expand(layers, heads)
    pool = float(given.sum()) * heads
    total = int(sum(selected)) * heads
    p = importance.double()
    exact = minimum + p * pool
    if cap is not None and redistribute and total < cap * layers * heads:
        fixed = torch.zeros(layers, heads, dtype=torch.bool)
        for _ in range(layers * heads):
            over = (exact > cap) & ~fixed
            if not bool(over.any()):
                break
            fixed |= over
            free = ~fixed
            left = total - cap * int(fixed.sum()) - float(minimum[free].sum())
            weights = torch.where(free, p, torch.zeros_like(p))
            if float(weights.sum()) > 0:
                share = weights / weights.sum() * left
            else:
                share = free.double() / float(free.sum()) * left
            exact = torch.where(fixed, torch.full_like(exact, float(cap)), minimum + share)
    elif cap is not None and redistribute:
        exact = torch.full_like(exact, float(cap))
        total = cap * layers * heads
    counts = round_to_total(exact, total)
    if cap is not None:
        counts = counts.clamp(max=cap)
    return counts.clamp(min=0)


@dataclass
class HeadKV(SnapKV):
    """HeadKV: SnapKV selection with per-head budgets from head importance scores (a model-wide pool).

    Args:
        window: the observation window, also kept in every head (8 in the paper under study).
        kernel_size, pooling: SnapKV's pooling.
        beta: the pool parameter of Eq. 4 (>= 1; larger = smaller pool, closer to uniform budgets).
        temperature: the exponent applied to the normalized scores (the reference code's ``temp``).
        head_scores: path of a scores file; ``None``: the file shipped for ``model_name``
            (``qpruning/head_scores/<model_name>.json``).
        model_name: the model's config name (``conf/pruner/headkv.yaml`` sets it to ``${model.name}``).
        redistribute: give budget that a head cannot use on a short prompt to the other heads (see the module
            docstring); ``False`` drops it, as the reference code does.
    """

    name: ClassVar[str] = "headkv"
    window: int = 8
    kernel_size: int = 7
    pooling: str = "max"
    beta: float = 1.01
    temperature: float = 1.0
    head_scores: str | None = None
    model_name: str | None = None
    redistribute: bool = True
    importance: HeadScores = field(init=False, repr=False, compare=False)
    last_allocation: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta >= 1.0:
            raise ConfigError(f"pruner.beta={self.beta} is below 1", "allowed: beta >= 1 (headkv: the share b // beta goes to the pool)")
        if not self.temperature > 0:
            raise ConfigError(f"pruner.temperature={self.temperature} is not positive", "allowed: a number > 0")
        self.importance = load_head_scores(resolve_scores_path(self.head_scores, self.model_name))
        self._plan: tuple[list[int], int] | None = None
        self._counts_key: tuple | None = None
        self._counts: torch.Tensor | None = None

    # -- geometry --------------------------------------------------------------------------------------------

    def validate_geometry(self, num_layers: int, q_heads: int, kv_heads: int) -> None:
        """Raise unless the scores fit a model of ``num_layers`` layers with ``q_heads`` / ``kv_heads`` heads."""
        scores = self.importance
        if scores.num_layers != num_layers or scores.num_heads not in (q_heads, kv_heads):
            raise ConfigError(
                f"headkv: the head scores in {scores.source} are for {scores.num_layers} layers x "
                f"{scores.num_heads} heads, but the model has {num_layers} layers x {q_heads} query heads "
                f"({kv_heads} KV heads)", "allowed: the scores of this model (pruner.head_scores=...)"
            )

    def kv_importance(self, kv_heads: int) -> torch.Tensor:
        """``S`` aggregated to KV heads, ``[layers, kv_heads]``: summed over each group of query heads."""
        s = self.importance.distribution(self.temperature)
        heads = s.shape[1]
        if heads == kv_heads:
            return s
        if heads % kv_heads:
            raise ValueError(f"headkv: {heads} scored heads per layer cannot be grouped into {kv_heads} KV heads")
        return s.view(s.shape[0], kv_heads, heads // kv_heads).sum(-1)

    # -- budgets ---------------------------------------------------------------------------------------------

    def layer_tokens(self, tokens, seq_len, statistics=None):
        """The plan's kept tokens per layer, unchanged (they decide which layers are compressed at all); remembered so that
        the pool can be formed over all layers when the first layer is allocated."""
        self._plan = (list(tokens), seq_len)
        self._counts_key = None
        return list(tokens)

    def head_counts(self, budgets: list[int], seq_len: int, kv_heads: int) -> torch.Tensor:
        """Kept tokens (window included) per layer and KV head, ``[layers, kv_heads]``, for a prompt of
        ``seq_len`` tokens. Layers whose budget is at least the prompt keep it whole and are not in the pool."""
        if len(budgets) != self.importance.num_layers:
            raise ValueError(
                f"headkv: the head scores in {self.importance.source} are for {self.importance.num_layers} layers, "
                f"the model has {len(budgets)}"
            )
        window = min(self.window, seq_len)
        importance = self.kv_importance(kv_heads)
        counts = torch.full((len(budgets), kv_heads), seq_len, dtype=torch.long)
        pooled = [i for i, b in enumerate(budgets) if b < seq_len]
        if pooled:
            selected = [max(budgets[i] - window, 0) for i in pooled]
            sub = importance[pooled]
            chosen = allocate_head_budgets(
                sub / sub.sum() if float(sub.sum()) > 0 else torch.full_like(sub, 1.0 / sub.numel()),
                selected,
                self.beta,
                cap=seq_len - window,
                redistribute=self.redistribute,
            )
            counts[pooled] = chosen + window
        return counts

    def allocate(self, scores, tokens, key_valid, layer_idx=0):
        batch, heads, seq = scores.shape
        if self._plan is not None and self._plan[1] == seq:
            budgets = self._plan[0]
        else:
            budgets = [tokens] * self.importance.num_layers
        key = (tuple(budgets), seq, heads)
        all_counts = self._counts
        if self._counts_key != key or all_counts is None:
            all_counts = self._counts = self.head_counts(budgets, seq, heads)
            self._counts_key = key
            self.last_allocation = {"seq_len": seq, "budgets": list(budgets), "counts": all_counts.clone()}
        counts = all_counts[layer_idx].to(scores.device).unsqueeze(0).expand(batch, heads)
        real = _real_lengths(key_valid, batch, seq, scores.device)
        return torch.minimum(counts, real.unsqueeze(1))

    def describe(self) -> str:
        return (
            f"{self.name}(window={self.window}, beta={self.beta}, temperature={self.temperature}, "
            f"scores={Path(self.importance.source).name})"
        )
