"""Runs that share a model, a benchmark and its samples, run together: one prefill per sample for all of them.

A grid (``python run.py -m ...``) varies the pruner, the quantizer and the budget far more often than the model
or the prompts. Every compressor compresses once, at the end of prefill, from the prefill's full-precision
tensors, so one prefill per sample serves every run of such a group (:mod:`qpruning.prefill`): the group's runs
are run by one :class:`~qpruning.evaluator.Evaluator` (:func:`~qpruning.runner.run_all`), which loads the model
once, runs each sample's prefill once, then builds each run's cache from it and decodes each run with
``model.generate`` as a one-by-one run does. The predictions are the same tokens.

Each run keeps its own folder exactly as :class:`~qpruning.runner.Runner` writes it: its lock, its
``predictions.jsonl`` (appended per sample, resumed per sample: a sample is prefilled only if some run still
lacks it), its ``metrics.json``. A record's ``seconds`` are its own compression and decoding plus an even share of
the shared prefill. Runs with a W&B logger get their samples at the end of the group when more than one run of
the group logs (one process holds one live W&B run at a time).

Which runs share a prefill is defined once, here (:data:`SHARED_BY`): :func:`group_runners` compares runners by
it, and the launcher (:mod:`qpruning.launcher`) groups a sweep's jobs by the configuration keys of the same names.
:func:`run_grouped` splits any list of runners into such groups; runs that cannot share (cross-entropy
benchmarks, a group of one) run one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qpruning.runner import Runner, run_all

SHARED_BY = ("model", "benchmark", "limit", "seed")
"""What the runs of one group have in common: the :class:`~qpruning.runner.Runner` fields, and the configuration
keys, of these names (a generation benchmark besides: :func:`shareable`)."""


def shareable(a: Runner, b: Runner) -> str | None:
    """Why runs ``a`` and ``b`` cannot share their prefills, or None when they can."""
    for what in SHARED_BY:
        left, right = getattr(a, what), getattr(b, what)
        if (type(left), left) != (type(right), right):
            return f"different {what}"
    if a.benchmark.evaluation != "generate":
        return f"benchmark.evaluation={a.benchmark.evaluation} (only generation shares its prefill)"
    return None


def group_runners(runners: list[Runner]) -> list[list[Runner]]:
    """``runners`` in groups that can share prefills (:func:`shareable`), in order of first appearance; a run that
    shares with none is a group of one."""
    groups: list[list[Runner]] = []
    for runner in runners:
        for group in groups:
            if shareable(group[0], runner) is None:
                group.append(runner)
                break
        else:
            groups.append([runner])
    return groups


def run_grouped(runners: list[Runner], batch_decode: bool = False) -> list[dict[str, Any]]:
    """Run every runner, groups sharing prefills (:class:`GroupRunner`); returns each one's metrics, in order."""
    metrics: dict[int, dict[str, Any]] = {}
    for group in group_runners(runners):
        results = GroupRunner(group, batch_decode=batch_decode).run()
        metrics.update({id(runner): result for runner, result in zip(group, results)})
    return [metrics[id(runner)] for runner in runners]


@dataclass
class GroupRunner:
    """Run ``runners`` (same model, benchmark, limit and seed; a generation benchmark) with one prefill per sample.

    Args:
        runners: the runs, each with its own compressor, folder and labels.
        batch_decode: decode the runs that share a quantizer (and its per-layer bits) together, as the rows of one
            batch (the evaluator's ``batched`` strategy, :mod:`qpruning.evaluator`): fewer decode steps, but a
            batch's arithmetic can differ from one row's in the last bits, and so, rarely, a token
            (results/bench/sweep/README.md). Within a batch, the runs whose caches stack (the same layout) decode
            together; a run whose cache stacks with no other decodes alone.
        loaded: ``(model, tokenizer)`` already in memory (default: the first run's model, loaded once).
    """

    runners: list[Runner]
    batch_decode: bool = False
    loaded: tuple | None = None

    def __post_init__(self) -> None:
        self.runners = list(self.runners)
        if not self.runners:
            raise ValueError("GroupRunner needs at least one runner")
        for runner in self.runners[1:]:
            reason = shareable(self.runners[0], runner)
            if reason is not None:
                raise ValueError(f"{runner.output_dir} cannot share prefills with {self.runners[0].output_dir}: "
                                 f"{reason}; allowed: runs of one model, benchmark, limit and seed (group_runners)")
        folders = [r.output_dir.resolve() for r in self.runners]
        if len(set(folders)) != len(folders):
            raise ValueError("GroupRunner: two runs of the group write the same folder")

    def run(self) -> list[dict[str, Any]]:
        """Run (or finish) every run; returns each one's metrics, in order. Each folder is locked meanwhile; a group
        of one runs as :meth:`Runner.run` runs it."""
        return run_all(self.runners, decode="batched" if self.batch_decode else "shared", loaded=self.loaded)
