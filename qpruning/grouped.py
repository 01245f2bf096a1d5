"""Runs that share a model, a benchmark and its samples, run together: one prefill per sample for all of them.

A grid (``python run.py -m ...``) varies the pruner, the quantizer and the budget far more often than the model
or the prompts. Every compressor compresses once, at the end of prefill, from the prefill's full-precision
tensors, so one prefill per sample serves every run of such a group (:mod:`qpruning.prefill`): the
:class:`GroupRunner` loads the model once, runs each sample's prefill once, then builds each run's cache from it
and decodes each run with ``model.generate`` as a one-by-one run does. The predictions are the same tokens.

Each run keeps its own folder exactly as :class:`~qpruning.runner.Runner` writes it: its lock, its
``predictions.jsonl`` (appended per sample, resumed per sample: a sample is prefilled only if some run still
lacks it), its ``metrics.json``. A record's ``seconds`` are its own compression and decoding plus an even share of
the shared prefill. Runs with a W&B logger get their samples at the end of the group when more than one run of
the group logs (one process holds one live W&B run at a time).

:func:`run_grouped` splits any list of runners into such groups (:func:`group_runners`); runs that cannot share
(cross-entropy benchmarks, a group of one) run one by one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qpruning.benchmarks import SampleError
from qpruning.cache.stack import stack_caches, stackable
from qpruning.loggers import NullLogger
from qpruning.prefill import SharedPrefill, queries_needed
from qpruning.runlock import RunLock
from qpruning.runner import Runner, RunState
from qpruning.transformers_api import cache_kwargs

logger = logging.getLogger(__name__)

# The folder of the run a group is working on (None: the group's own work, such as loading the model or a shared
# prefill), for the log files of each run (:class:`RunLogFilter`).
_CURRENT_RUN: ContextVar[Path | None] = ContextVar("qpruning_current_run", default=None)


@contextlib.contextmanager
def current_run(folder: Path) -> Iterator[None]:
    """Within the block, log records belong to the run of ``folder`` (:class:`RunLogFilter`)."""
    token = _CURRENT_RUN.set(Path(folder).resolve())
    try:
        yield
    finally:
        _CURRENT_RUN.reset(token)


class RunLogFilter(logging.Filter):
    """Lets through, for run ``folder``'s own log file, the records of that run and those of no run in particular
    (what its group does for all its runs): each run's log reads as if it had run alone, shared work included."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = Path(folder).resolve()

    def filter(self, record: logging.LogRecord) -> bool:
        current = _CURRENT_RUN.get()
        return current is None or current == self.folder


def shareable(a: Runner, b: Runner) -> str | None:
    """Why runs ``a`` and ``b`` cannot share their prefills, or None when they can."""
    for what, left, right in (
        ("model", a.model, b.model),
        ("benchmark", (type(a.benchmark), a.benchmark), (type(b.benchmark), b.benchmark)),
        ("limit", a.limit, b.limit),
        ("seed", a.seed, b.seed),
    ):
        if left != right:
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
            batch (:func:`~qpruning.cache.stack.stack_caches`): fewer decode steps, but a batch's arithmetic can
            differ from one row's in the last bits, and so, rarely, a token (results/bench/sweep/README.md).
            Within a batch, the runs whose caches stack (the same layout) decode together; a run whose cache
            stacks with no other decodes alone.
    """

    runners: list[Runner]
    batch_decode: bool = False

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
        of one is a plain :meth:`Runner.run`."""
        first = self.runners[0]
        if len(self.runners) == 1:
            return [first.run()]
        logging_runs = sum(not isinstance(r.run_logger, NullLogger) for r in self.runners)
        with contextlib.ExitStack() as stack:
            for runner in self.runners:
                stack.enter_context(RunLock(runner.output_dir))
            states, prepared = [], []

            def prepare(runner: Runner) -> tuple:
                """The group's tokenizer and samples, made once (each run still validates its configuration)."""
                if prepared:
                    runner.validate()
                else:
                    prepared.append(runner.prepare())
                return prepared[0]

            for runner in self.runners:
                with current_run(runner.output_dir):
                    states.append(runner.begin(live_logger=logging_runs <= 1,
                                               prepare=lambda runner=runner: prepare(runner)))
                states[-1].shared = True
            pending = [(r, s) for r, s in zip(self.runners, states) if s.metrics is None and s.todo]
            if pending:
                torch.manual_seed(first.seed)
                model, tokenizer = first.preloaded or first.model.load()
                self._run_samples(model, tokenizer, pending)
            metrics = []
            for runner, state in zip(self.runners, states):
                with current_run(runner.output_dir):
                    metrics.append(state.metrics if state.metrics is not None else runner.finish(state))
            return metrics

    def _run_samples(self, model, tokenizer, pending: list[tuple[Runner, RunState]]) -> None:
        from tqdm.auto import tqdm

        todo = [{s.id for s in state.todo} for _, state in pending]
        samples = [s for s in pending[0][1].samples if any(s.id in ids for ids in todo)]
        first = pending[0][0]
        logger.info("Group of %d runs on %s, %s (%s): one prefill per sample for all of them, %d samples",
                    len(pending), first.model.name, first.labels.benchmark_variant or first.labels.benchmark,
                    ", ".join(runner.compressor.describe() for runner, _ in pending), len(samples))
        progress = tqdm(samples, desc=f"{first.labels.benchmark} x {len(pending)} configurations", unit="sample",
                        dynamic_ncols=True)
        with torch.inference_mode():
            for sample in progress:
                needing = [(r, s) for (r, s), ids in zip(pending, todo) if sample.id in ids]
                prefill = self._prefill(model, tokenizer, sample, needing) if len(needing) > 1 else None
                batches = self._decode_batches(model, needing) if self.batch_decode and prefill else [needing]
                for batch in batches:
                    together = self._decode_together(model, tokenizer, sample, prefill, batch) if len(batch) > 1 else {}
                    for i, (runner, state) in enumerate(batch):
                        with current_run(runner.output_dir), runner.compressor.attach(model):
                            record = together[i] if i in together else runner.evaluate(model, tokenizer, sample, prefill)
                            runner.add_record(state, record)
                del prefill

    @staticmethod
    def _decode_batches(model, needing: list[tuple[Runner, RunState]]) -> list[list[tuple[Runner, RunState]]]:
        """``needing`` in batches of runs with the same quantizer, storage and per-layer bits."""
        batches: dict[tuple, list[tuple[Runner, RunState]]] = {}
        for runner, state in needing:
            compressor = runner.compressor
            key = (repr(compressor.quantizer), compressor.storage_dtype, compressor.kernel, compressor.compat,
                   tuple(plan.bits for plan in compressor.plan(model.config)))
            batches.setdefault(key, []).append((runner, state))
        return list(batches.values())

    @staticmethod
    def _decode_together(model, tokenizer, sample, prefill: SharedPrefill,
                         batch: list[tuple[Runner, RunState]]) -> dict[int, dict[str, Any]]:
        """The records of ``batch``'s runs decoded as the rows of batches, by their index in ``batch``: the runs
        whose caches stack (:func:`stackable`: the same layout layer by layer) decode together, one batch per such
        set; a run whose cache stacks with no other decodes alone from the cache already filled (each run's cache
        is compressed once). Empty when the prompt fails (each run then records the failure on its own)."""
        first = batch[0][0]
        try:
            input_ids, kwargs = first.prompt(model, tokenizer, sample)
        except SampleError:
            return {}
        caches, fill_started = [], time.time()
        for runner, _ in batch:
            caches.append(runner.compressor.new_cache(model))
            prefill.fill(runner.compressor, caches[-1])
        fill_seconds = (time.time() - fill_started) / len(batch)
        sets: list[list[int]] = []
        for index, cache in enumerate(caches):  # stacking compares each layout with the first one's: greedy is exact
            home = next((s for s in sets if stackable([caches[s[0]], cache])), None)
            if home is None:
                sets.append([index])
            else:
                home.append(index)
        eos = kwargs.get("eos_token_id", model.generation_config.eos_token_id)
        eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        records: dict[int, dict[str, Any]] = {}
        for indices in sets:
            started = time.time()
            members = [caches[i] for i in indices]
            rows, length = len(indices), input_ids.shape[1]
            decoded = stack_caches(members) if rows > 1 else members[0]
            ids = input_ids.expand(rows, -1)
            lead = batch[indices[0]][0]
            with lead.compressor.attach(model), prefill.replayed_rows(model, decoded, lambda: None, rows):
                output = model.generate(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(model, decoded),
                                        **kwargs)
            seconds = round((time.time() - started) / rows + fill_seconds + prefill.share_seconds, 3)
            for row, (index, cache) in enumerate(zip(indices, members)):
                runner = batch[index][0]
                tokens = output[row, length:].tolist()
                end = next((i + 1 for i, token in enumerate(tokens) if token in eos), len(tokens))  # then padding
                try:
                    record = runner.generated_record(sample, tokenizer, tokens[:end], length, cache)
                except SampleError as exc:
                    record = runner.failed_record(sample, exc)
                record["seconds"] = seconds
                records[index] = record
            if rows > 1:
                logger.debug("sample %s: %d runs decoded as one batch in %.2fs", sample.id, rows, time.time() - started)
            else:
                logger.debug("sample %s: %s decoded alone (its cache stacks with no other of its batch)", sample.id,
                             lead.output_dir.name)
        return records

    @staticmethod
    def _prefill(model, tokenizer, sample, needing: list[tuple[Runner, RunState]]) -> SharedPrefill | None:
        """The sample's prefill, once for ``needing``; None when its prompt fails (each run records the failure)."""
        runner = needing[0][0]
        try:
            input_ids, kwargs = runner.prompt(model, tokenizer, sample)
        except SampleError:
            return None
        queries = queries_needed(r.compressor for r, _ in needing)
        prefill = SharedPrefill.record(model, runner.compressor, input_ids, kwargs, queries)
        prefill.sharers = len(needing)
        logger.debug("sample %s: one prefill of %d tokens in %.2fs for %d runs (%s queries kept)", sample.id,
                     input_ids.shape[1], prefill.seconds, len(needing), "all" if queries is None else queries)
        return prefill
