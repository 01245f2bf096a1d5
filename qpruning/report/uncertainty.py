"""Bootstrap intervals of a run's score from its per-sample scores (``predictions.jsonl``), numpy only.

A run's headline score is the mean over tasks of each task's mean sample score (``Benchmark.aggregate``: NIAH
has one task, so it is the plain mean; RULER averages its tasks). The interval resamples the samples *within each
task* (a stratified percentile bootstrap: the benchmark fixes how many samples each task has) and recomputes that
statistic, so it brackets the number the run reports. The generator is seeded: the same files give the same
interval on every machine.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .collect import read_predictions
from .labels import is_missing

logger = logging.getLogger(__name__)

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval of a score.

    Attributes:
        estimate: the statistic on the samples themselves (mean of the per-task means).
        low / high: the interval's bounds (NaN without samples).
        n: samples behind it.
    """

    estimate: float
    low: float
    high: float
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n={self.n}: a sample count cannot be negative")
        if self.n and not self.low <= self.high:
            raise ValueError(f"interval [{self.low}, {self.high}]: low must not exceed high")


EMPTY = Interval(math.nan, math.nan, math.nan, 0)


def sample_scores(run_dir: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, tasks) of a run's scored samples: ``status`` ok and a numeric ``score``; an id seen twice counts once
    (the last line wins, as when the report counts samples)."""
    by_id: dict[str, tuple[float, str]] = {}
    for index, record in enumerate(read_predictions(run_dir)):
        key = str(record.get("id", f"#{index}"))
        score: Any = record.get("score")
        numeric = isinstance(score, int | float) and not isinstance(score, bool) and not is_missing(score)
        if record.get("status", "ok") != "ok" or not numeric:
            by_id.pop(key, None)
            continue
        by_id[key] = (float(score), str(record.get("task", "")))
    scores = np.array([s for s, _ in by_id.values()], dtype=float)
    tasks = np.array([t for _, t in by_id.values()], dtype=object)
    return scores, tasks


def bootstrap_interval(
    scores: Sequence[float] | np.ndarray,
    tasks: Sequence[str] | np.ndarray | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Interval:
    """The ``level`` percentile bootstrap interval of the mean of per-task means of ``scores``.

    Args:
        scores: per-sample scores.
        tasks: each sample's task (None: one task, the statistic is the plain mean); samples are resampled
            within their task.
        resamples: bootstrap resamples (at least 1).
        seed: seed of numpy's generator: equal inputs give equal intervals.
        level: coverage, in (0, 1).
    """
    if resamples < 1:
        raise ValueError(f"resamples={resamples}: use at least 1 bootstrap resample")
    if not 0 < level < 1:
        raise ValueError(f"level={level}: the coverage must lie strictly between 0 and 1 (e.g. 0.95)")
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        return EMPTY
    if tasks is None:
        groups = np.zeros(values.size, dtype=int)
    else:
        groups = np.unique(np.asarray(tasks, dtype=str), return_inverse=True)[1].reshape(-1)
    if groups.size != values.size:
        raise ValueError(f"{values.size} scores but {groups.size} tasks: give one task per score")
    rng = np.random.default_rng(seed)
    task_means = []
    estimates = []
    for group in np.unique(groups):
        members = values[groups == group]
        picks = rng.integers(0, members.size, size=(resamples, members.size))
        task_means.append(members[picks].mean(axis=1))
        estimates.append(members.mean())
    statistic = np.mean(task_means, axis=0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(statistic, [tail, 100 - tail])
    return Interval(float(np.mean(estimates)), float(low), float(high), int(values.size))


def run_interval(
    run_dir: str | os.PathLike[str], *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> Interval:
    """:func:`bootstrap_interval` of a run folder's scored samples (:data:`EMPTY` when it has none)."""
    scores, tasks = sample_scores(run_dir)
    if scores.size == 0:
        logger.info("%s has no scored samples: no interval", run_dir)
    return bootstrap_interval(scores, tasks, resamples=resamples, seed=seed, level=level)
