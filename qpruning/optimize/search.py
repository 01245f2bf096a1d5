"""Greedy local search over per-layer-group (bits, bytes) allocations under a byte budget.

The state gives each group of layers its bits and its byte allowance per KV row; its tokens are the most that fit
(:func:`~qpruning.optimize.allocation.tokens_for_bytes`). The search starts from the best of the uniform points
(1x16, 2x8, 4x4: every layer at the same bits, the same bytes), then repeatedly tries, in a seeded random
order, two kinds of moves and takes the first that lowers the objective:

- *precision*: a group changes its bits at equal bytes (more tokens at fewer bits, or the reverse), or its
  rotation when the choices include rotated precisions (``bits_choices=[4,8,16,2r,4r]``);
- *transfer*: a fraction of one group's bytes moves to another group (the budget stays the same).

It stops when no move improves, or after ``max_evaluations``. Every evaluation is appended to a JSONL cache keyed
by the allocation, so a stopped search, run again, replays the same decisions from the cache and goes on where it
stopped; with the same seed it makes the same decisions.

The same search runs over tier shares (``search=tiers``, :mod:`qpruning.optimize.tiers`): any :class:`Space`
whose states give :class:`Candidate` s with keys of their own.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from qpruning.cache.quantizers import KVQuantizer
from qpruning.optimize.allocation import (
    Allocation,
    Geometry,
    GroupSetting,
    Precision,
    full_cache_bytes,
    rotated,
    tokens_for_bytes,
)
from qpruning.records import append_jsonl, read_jsonl

if TYPE_CHECKING:
    from qpruning.compressor import KVCompressor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class State:
    """Bits and byte allowance (per layer and KV row) of each group, and its rotation (``rotate``: one
    ``True``/``None`` per group, see :class:`Precision`; empty: ``None`` everywhere)."""

    bits: tuple[int, ...]
    allowance: tuple[float, ...]
    rotate: tuple[bool | None, ...] = ()

    def precision(self, group: int) -> Precision:
        return Precision(self.bits[group], self.rotate[group] if self.rotate else None)

    def with_precision(self, group: int, precision: Precision) -> State:
        rotate = list(self.rotate or (None,) * len(self.bits))
        rotate[group] = precision.rotate
        bits = self.bits[:group] + (precision.bits,) + self.bits[group + 1 :]
        return State(bits, self.allowance, tuple(rotate) if any(r is not None for r in rotate) else ())


@dataclass
class Evaluation:
    key: str
    objective: float
    allocation: list[dict]
    nbytes: int
    measured_bytes: int | None = None
    per_prompt: list[float] = field(default_factory=list)
    kind: str = "move"


class EvaluationCache:
    """Evaluations on disk, one JSON line each, appended and flushed as they finish.

    Reading repairs the file (:func:`qpruning.records.read_jsonl`): a line cut by a kill or damaged anywhere is
    skipped, named and moved to ``evaluations.jsonl.rejected``; every good line, before or after it, is kept.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, Evaluation] = {}
        for data in read_jsonl(self.path, required=("key",), check=lambda d: Evaluation(**d)):
            self.entries[data["key"]] = Evaluation(**data)

    def get(self, key: str) -> Evaluation | None:
        return self.entries.get(key)

    def put(self, evaluation: Evaluation) -> None:
        self.entries[evaluation.key] = evaluation
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.path, vars(evaluation))


@dataclass
class SearchSpace:
    """What the search may choose, and the budget it must meet."""

    geometry: Geometry
    quantizer: KVQuantizer
    groups: list[tuple[int, int]]
    budget: float
    full_tokens: int
    max_tokens: int
    bits_choices: tuple[int | str, ...] = (4, 8, 16)  # a number, or "4r" for rotated (see Precision)
    transfer_fraction: float = 0.25
    min_tokens: int = 1  # the pruner's window must fit in every layer

    def __post_init__(self) -> None:
        self.precisions = tuple(Precision.parse(choice) for choice in self.bits_choices)

    @property
    def budget_bytes(self) -> float:
        return self.budget * full_cache_bytes(self.geometry, self.full_tokens)

    def uniform_allowance(self) -> float:
        return self.budget_bytes / (self.geometry.num_layers * self.geometry.kv_heads)

    def allocation(self, state: State, name: str = "allocation") -> Allocation:
        settings = []
        head_dim, kv_heads = self.geometry.head_dim, self.geometry.kv_heads
        for g, ((first, last), allowance) in enumerate(zip(self.groups, state.allowance)):
            precision = state.precision(g)
            if rotated(precision.rotate, self.quantizer):
                allowance -= head_dim / kv_heads  # the layer's sign bytes, shared by its rows
            tokens = tokens_for_bytes(allowance, precision.bits, self.quantizer, head_dim, self.max_tokens)
            settings.append(GroupSetting(first, last, precision.bits, tokens, precision.rotate))
        return Allocation(settings, name=name)

    def nbytes(self, allocation: Allocation) -> int:
        return allocation.nbytes(self.geometry, self.quantizer)

    def fits(self, state: State) -> bool:
        allocation = self.allocation(state)
        if any(g.tokens < self.min_tokens for g in allocation.groups):
            return False
        return allocation.nbytes(self.geometry, self.quantizer) <= self.budget_bytes

    def uniform_states(self) -> dict[str, State]:
        allowance = self.uniform_allowance()
        n = len(self.groups)
        ordered = sorted(self.precisions, key=lambda p: (-p.bits, bool(p.rotate)))
        return {
            f"{16 // p.bits}x{p.label}": State((p.bits,) * n, (allowance,) * n, (p.rotate,) * n if p.rotate else ())
            for p in ordered
        }

    def moves(self, state: State) -> list[State]:
        out = []
        n = len(self.groups)
        for g in range(n):
            for precision in self.precisions:
                if precision != state.precision(g):
                    out.append(state.with_precision(g, precision))
        sizes = [last - first + 1 for first, last in self.groups]
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                moved = self.transfer_fraction * state.allowance[i] * sizes[i]
                allowance = list(state.allowance)
                allowance[i] -= moved / sizes[i]
                allowance[j] += moved / sizes[j]
                out.append(State(state.bits, tuple(allowance), state.rotate))
        return [s for s in out if self.fits(s)]


class Candidate(Protocol):
    """What the search evaluates: an :class:`Allocation` (search=layers) or a tiering (search=tiers,
    :class:`qpruning.optimize.tiers.Tiering`)."""

    name: str
    meta: dict

    def key(self) -> str: ...

    def records(self) -> list[dict]: ...

    def describe(self) -> str: ...

    def compressor(self, base: KVCompressor) -> KVCompressor: ...


StateT = TypeVar("StateT", bound=Hashable)
CandidateT = TypeVar("CandidateT", bound=Candidate)


class Space(Protocol[StateT, CandidateT]):
    """A search space: :class:`SearchSpace` (layer groups) or :class:`qpruning.optimize.tiers.TierSpace`."""

    @property
    def budget_bytes(self) -> float: ...

    def allocation(self, state: StateT, name: str = ...) -> CandidateT: ...

    def nbytes(self, allocation: CandidateT) -> int: ...

    def uniform_states(self) -> dict[str, StateT]: ...

    def moves(self, state: StateT) -> list[StateT]: ...


@dataclass
class SearchResult(Generic[CandidateT]):
    best: CandidateT
    best_evaluation: Evaluation
    history: list[Evaluation]
    uniform: dict[str, Evaluation]


def greedy_search(
    space: Space[StateT, CandidateT],
    objective: Callable[[CandidateT], tuple[float, int | None, list[float]]],
    cache: EvaluationCache,
    max_evaluations: int = 60,
    seed: int = 0,
    tolerance: float = 1e-4,
) -> SearchResult[CandidateT]:
    """Minimize ``objective(allocation) -> (value, measured_bytes, per_prompt)`` over ``space``."""
    history: list[Evaluation] = []

    def evaluate(state: StateT, kind: str, name: str = "allocation") -> Evaluation:
        allocation = space.allocation(state, name)
        key = allocation.key()
        cached = cache.get(key)
        if cached is None:
            value, measured, per_prompt = objective(allocation)
            cached = Evaluation(
                key=key,
                objective=value,
                allocation=allocation.records(),
                nbytes=space.nbytes(allocation),
                measured_bytes=measured,
                per_prompt=per_prompt,
                kind=kind,
            )
            cache.put(cached)
            logger.info("evaluated %-8s %s -> %.4f", kind, allocation.describe(), value)
        history.append(cached)
        return cached

    uniform = {}
    for label, state in space.uniform_states().items():
        uniform[label] = evaluate(state, "uniform", f"uniform-{label}")
    label, best_eval = min(uniform.items(), key=lambda item: item[1].objective)
    best_state = space.uniform_states()[label]
    logger.info("best uniform point: %s (%.4f)", label, best_eval.objective)
    rng = random.Random(seed)
    evaluated = len(history)
    while evaluated < max_evaluations:
        candidates = space.moves(best_state)
        rng.shuffle(candidates)
        improved = False
        for state in candidates:
            if evaluated >= max_evaluations:
                break
            evaluation = evaluate(state, "move")
            evaluated += 1
            if evaluation.objective < best_eval.objective - tolerance:
                best_state, best_eval, improved = state, evaluation, True
                logger.info("improved to %.4f: %s", best_eval.objective, space.allocation(state).describe())
                break
        if not improved:
            break
    best = space.allocation(best_state, name="optimized")
    return SearchResult(best=best, best_evaluation=best_eval, history=history, uniform=uniform)
