"""One run: a model, a compressor and a benchmark -> ``predictions.jsonl`` + ``metrics.json`` in a folder.

:class:`Runner` is one run's definition and its record store: its folder, its lock, what is left to do
(:meth:`Runner.begin`), each record appended (:meth:`Runner.append`), the metrics written (:meth:`Runner.finish`).
The records themselves are made by :class:`~qpruning.evaluator.Evaluator`, for one run or for several that share a
model and a benchmark's samples (:func:`run_all`; :mod:`qpruning.grouped` forms such groups).

The run is resumable at sample granularity. Each finished sample is appended to ``predictions.jsonl`` and
flushed to disk before the next one starts; a rerun of the same folder reads the ids already there and does only
the rest, so a run killed at any moment loses no finished sample and repeats none (a line cut in half by the kill,
or damaged anywhere, is set aside and its sample redone; every good line is kept: :mod:`qpruning.records`).
``metrics.json`` is written last, atomically, when every sample is in; its presence means the run is complete (for
its ``limit``) and a rerun returns at once. One process at a time runs a folder (:mod:`qpruning.runlock`); the
folder's name comes from the run's identity (:mod:`qpruning.identity`).

Everything is validated before the model is loaded: the compressor against the model's config (bits, group size
against ``head_dim``, budgets against the pruner's window, sliding windows), and the benchmark against the
context window and its data. The Hydra application (:mod:`qpruning.app`, behind ``run.py``) builds a
:class:`Runner` from the config; this module does not need Hydra.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qpruning.benchmarks import Benchmark
from qpruning.benchmarks.base import EVALUATIONS
from qpruning.compressor import KVCompressor
from qpruning.errors import ConfigError, DataError, check_choice, check_int, check_seed, is_int
from qpruning.evaluator import Evaluator
from qpruning.identity import RunLabels, input_files, run_hash
from qpruning.loggers import NullLogger, RunLogger, current_run
from qpruning.models import ModelSpec
from qpruning.records import append_jsonl, read_jsonl, write_json_atomic
from qpruning.runlock import RunLock

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The records of ``predictions.jsonl``, repaired: a line cut by a kill or damaged anywhere is skipped, named
    in a warning and moved to ``predictions.jsonl.rejected``; every good line is kept (:func:`read_jsonl`)."""
    return read_jsonl(path, required=("id",))


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record and make it durable before the next sample starts."""
    append_jsonl(path, record)


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


@dataclass
class RunState:
    """What a run has left to do (:meth:`Runner.begin`), and what it did since.

    Args:
        samples: the run's samples (its first ``limit``).
        todo: those not in ``predictions.jsonl`` yet.
        done: the records of the samples finished, earlier ones first.
        started: when this attempt started (``metrics.json``'s ``seconds``).
        live_logger: whether the run's logger gets each sample as it finishes (else all at the end).
        metrics: set when the run was complete already: its metrics, nothing to do.
        new: the records this attempt added.
        shared: whether the run shares its time with others (:func:`run_all`): its ``seconds`` are then the
            sum of its new records' (each with its share of the shared prefill), not the attempt's wall time.
    """

    samples: list
    todo: list
    done: list[dict[str, Any]]
    started: float
    live_logger: bool = True
    metrics: dict[str, Any] | None = None
    new: list[dict[str, Any]] = field(default_factory=list)
    shared: bool = False


@dataclass
class Runner:
    """One benchmark on one model with one compressor, into ``output_dir``: the run and its record store.

    Args:
        model: what to load (unless ``preloaded`` holds it already).
        compressor: the pruner, quantizer and budget.
        benchmark: samples, prompts and metric.
        labels: the names written into ``metrics.json``.
        output_dir: the run's folder (``predictions.jsonl``, ``metrics.json``).
        limit: run only the first ``limit`` samples.
        seed: seeds torch before the run (greedy decoding is deterministic anyway).
        config: the whole configuration, stored in ``metrics.json``.
        run_logger: where metrics and samples are also sent (W&B), or nothing.
    """

    model: ModelSpec
    compressor: KVCompressor
    benchmark: Benchmark
    labels: RunLabels
    output_dir: Path
    limit: int | None = None
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    run_logger: RunLogger = field(default_factory=NullLogger)
    preloaded: tuple | None = None  # (model, tokenizer) already in memory, to share between runs

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        check_int("limit", self.limit, minimum=1, optional=True, meaning="the first N samples; null: all")
        check_seed("seed", self.seed)
        check_choice("benchmark.evaluation", self.benchmark.evaluation, EVALUATIONS)

    @property
    def predictions_path(self) -> Path:
        return self.output_dir / PREDICTIONS

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS

    def validate(self):
        """Check everything that can be checked without weights; returns the model config."""
        model_config = self.model.load_config()
        self.check(model_config)
        return model_config

    def check(self, model_config, machine: bool = True) -> None:
        """:meth:`validate`'s checks against ``model_config`` (a sweep reads it once): the compressor's plan, the
        benchmark in the model's window, the window within the model's positions, a typed ``tokens`` within the
        longest prompt; with ``machine``, what this machine must have (the model's device, attention and dtype,
        ``kernel=on``'s Triton)."""
        positions = getattr(model_config, "max_position_embeddings", None)
        if is_int(positions) and self.model.context_window > positions:
            raise ConfigError(
                f"model.context_window={self.model.context_window} is more than the model's "
                f"max_position_embeddings={positions}: prompts that long run past the positions it knows",
                f"allowed: model.context_window <= {positions}")
        self.compressor.plan(model_config)
        self.benchmark.validate(self.model.context_window)
        self._check_tokens_fit()
        if machine:
            self.model.check_machine()
            check_kernel(self.compressor.kernel, self.model.resolved_device())

    def _check_tokens_fit(self) -> None:
        """A typed ``tokens`` (or a layer's) above the longest prompt keeps every token: refused, not run as a
        compressed run that is not one. An allocation's tokens (``qpruning optimize``'s, for a budget) are not typed."""
        if not self.compressor.pruner.prunes or self.compressor.every_layer:
            return
        longest = self.benchmark.longest_prompt(self.model.context_window)
        typed = [("tokens", self.compressor.tokens)]
        typed += [(f"layers[{o.layers!r}].tokens", o.tokens) for o in self.compressor.layers]
        for key, tokens in typed:
            if tokens is not None and tokens > longest:
                raise ConfigError(
                    f"{key}={tokens} is more than the longest prompt of "
                    f"benchmark={self.labels.benchmark_variant or self.labels.benchmark} ({longest} tokens): every "
                    "token would be kept", f"allowed: tokens <= {longest}, a budget=, or pruner=none (no pruning)")

    def prepare(self):
        """Everything before the weights: validation, the tokenizer, the samples (data must be present).

        Returns ``(tokenizer, samples)``. A bad configuration or missing data fails here, in seconds.
        """
        self.validate()
        tokenizer = self.model.load_tokenizer()
        # Only the samples the run uses are made (RULER generates them lazily): the first ``limit``.
        samples = list(itertools.islice(self.benchmark.samples(tokenizer), self.limit))
        if not samples:
            raise DataError(f"benchmark={self.labels.benchmark_variant or self.labels.benchmark} has no samples",
                            "allowed: a benchmark configuration and data that give at least one sample")
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            raise DataError(f"benchmark={self.labels.benchmark_variant or self.labels.benchmark} has duplicate "
                            "sample ids", "allowed: data whose samples have distinct ids")
        return tokenizer, samples

    def lock(self) -> RunLock:
        """The folder's lock (:class:`~qpruning.runlock.RunLock`): one process at a time runs the folder."""
        return RunLock(self.output_dir)

    def run(self) -> dict[str, Any]:
        """Run (or finish) the benchmark; returns the metrics (:func:`run_all` of this run alone).

        The folder is locked for this process (:class:`~qpruning.runlock.RunLock`: a second process stops with
        :class:`~qpruning.runlock.RunLockedError`). ``metrics.json`` covers the first ``limit`` samples (its
        ``limit`` field): a rerun with the same or a smaller limit returns at once (a smaller one: the metrics of
        its samples, computed from ``predictions.jsonl``, the file untouched); a larger one runs the samples
        still missing and rewrites ``metrics.json``.
        """
        return run_all([self], loaded=self.preloaded)[0]

    def _completed_limit(self) -> tuple[dict[str, Any] | None, bool]:
        """``(metrics.json, whether it covers this run's samples)``; ``(None, False)`` when there is none."""
        if not self.metrics_path.exists():
            return None, False
        metrics = json.loads(self.metrics_path.read_text())
        done_limit = metrics.get("limit", (metrics.get("config") or {}).get("limit"))
        metrics.setdefault("limit", done_limit)
        return metrics, done_limit is None or (self.limit is not None and self.limit <= done_limit)

    def begin(self, live_logger: bool = True, prepare: Callable[[], tuple] | None = None,
              shared: bool = False) -> RunState:
        """What the run has left to do (call it holding the folder's lock: :func:`run_all` does).

        A run complete already for its limit gets ``metrics`` set and nothing to do. ``live_logger``: start the
        run's logger now and send it each sample as it finishes (False: :meth:`finish` sends them all at the end,
        for runs that interleave in one process). ``prepare``: what gives ``(tokenizer, samples)`` (default:
        :meth:`prepare`; runs of one benchmark share them). ``shared``: the run shares its time with others
        (:attr:`RunState.shared`)."""
        complete, covered = self._completed_limit()
        if covered and complete is not None and complete["limit"] == self.limit:
            logger.info("%s is complete already: nothing to do", self.output_dir)
            return RunState([], [], [], time.time(), live_logger, metrics=complete, shared=shared)
        _, samples = (prepare or self.prepare)()
        records = {r["id"]: r for r in read_predictions(self.predictions_path)}
        if covered and complete is not None and all(s.id in records for s in samples):  # a smaller limit
            logger.info("%s is complete already (limit %s): the metrics of its first %d samples, metrics.json "
                        "unchanged", self.output_dir, complete["limit"], len(samples))
            return RunState(samples, [], [], time.time(), live_logger,
                            metrics=self._metrics([records[s.id] for s in samples], 0.0), shared=shared)
        logger.info("Run %s: %s on %s, %s", self.output_dir, self.labels.benchmark, self.model.name,
                    self.compressor.describe())
        todo = [s for s in samples if s.id not in records]
        if records:
            logger.info("Resuming: %d of %d samples already done", len(samples) - len(todo), len(samples))
        if live_logger:
            self.run_logger.start(self.config, self.output_dir)
        done = [records[s.id] for s in samples if s.id in records]
        return RunState(samples, todo, done, time.time(), live_logger, shared=shared)

    def append(self, state: RunState, record: dict[str, Any]) -> float | None:
        """Append ``record`` to ``predictions.jsonl`` (durable before the next sample) and to ``state``; returns the
        running score."""
        append_record(self.predictions_path, record)
        state.done.append(record)
        state.new.append(record)
        running = _finite(self.benchmark.aggregate(state.done).get("score"))
        if state.live_logger:
            self.run_logger.log_sample(record, done=len(state.done), total=len(state.samples),
                                       running_score=running)
        return running

    def finish(self, state: RunState) -> dict[str, Any]:
        """Write ``metrics.json`` from ``predictions.jsonl`` once every sample of ``state`` is in."""
        by_id = {r["id"]: r for r in read_predictions(self.predictions_path)}
        ordered = [by_id[s.id] for s in state.samples]
        seconds = sum(r["seconds"] for r in state.new) if state.shared else time.time() - state.started
        metrics = self._metrics(ordered, seconds)
        write_json_atomic(self.metrics_path, metrics)
        if not state.live_logger:
            self.run_logger.start(self.config, self.output_dir)
            for done, record in enumerate(state.new, start=len(ordered) - len(state.new) + 1):
                self.run_logger.log_sample(record, done=done, total=len(state.samples))
        self.run_logger.finish(metrics, ordered)
        score = metrics["score"] if metrics["score"] is not None else float("nan")
        logger.info("%s: score %.2f over %d samples (%d failed)", self.labels.benchmark, score,
                    metrics["samples"], metrics["failed"])
        return metrics

    def _metrics(self, records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        ok = [r for r in records if r.get("status") == "ok"]
        summary = self.benchmark.aggregate(records)

        def mean(key):
            values = [r[key] for r in ok if r.get(key) is not None]
            return sum(values) / len(values) if values else None

        kv_bytes, kv_full = mean("kv_bytes"), mean("kv_bytes_full")
        kv_global, kv_full_global = mean("kv_bytes_global"), mean("kv_bytes_full_global")
        metrics: dict[str, Any] = {
            **{k: v for k, v in vars(self.labels).items()},
            "benchmark_length": getattr(self.benchmark, "benchmark_length", None),
            "tokens_effective": mean("kept_tokens"),
            "score": _finite(summary.get("score")),
            "task_scores": summary.get("task_scores", {}),
            "category_scores": summary.get("category_scores", {}),
            "length_scores": summary.get("length_scores", {}),
            "kv_bytes": kv_bytes,
            "kv_bytes_full": kv_full,
            "kv_ratio": kv_bytes / kv_full if kv_bytes and kv_full else None,
            "kv_bytes_global": kv_global,
            "kv_bytes_full_global": kv_full_global,
            "kv_ratio_global": kv_global / kv_full_global if kv_global and kv_full_global else None,
            "samples": len(ok),
            "failed": len(records) - len(ok),
            "seconds": round(seconds, 2),
            "device": _device_name(),
            "limit": self.limit,
            "run_hash": run_hash(self.config) if self.config else None,
            "input_files": input_files(self.config) if self.config else {},
            "config": self.config,
        }
        for key, value in summary.items():
            metrics.setdefault(key, value)
        return metrics


def run_all(runners: list[Runner], decode: str = "shared", loaded: tuple | None = None) -> list[dict[str, Any]]:
    """Run (or finish) ``runners``, which share a model and a benchmark's samples, on one loaded model with one
    :class:`~qpruning.evaluator.Evaluator` (``decode``: its strategy); returns each one's metrics, in order.

    Every folder is locked meanwhile; each run starts from what its folder holds (:meth:`Runner.begin`), gets each
    record as it is made (:meth:`Runner.append`) and writes its metrics (:meth:`Runner.finish`). The tokenizer and
    the samples are made once (each run still validates its configuration); the model is loaded once, only if
    some run has samples left (``loaded``: ``(model, tokenizer)`` already in memory). Of several runs, each one's
    ``seconds`` are the sum of its records' (:attr:`RunState.shared`), and the W&B runs get their samples at the end
    when more than one run logs (one process holds one live W&B run at a time)."""
    first, group = runners[0], len(runners) > 1
    logging_runs = sum(not isinstance(r.run_logger, NullLogger) for r in runners)
    with contextlib.ExitStack() as stack:
        for runner in runners:
            stack.enter_context(runner.lock())
        prepared: list[tuple] = []

        def prepare(runner: Runner) -> tuple:
            if prepared:
                runner.validate()
            else:
                prepared.append(runner.prepare())
            return prepared[0]

        states = []
        for runner in runners:
            with current_run(runner.output_dir):
                states.append(runner.begin(live_logger=logging_runs <= 1, prepare=functools.partial(prepare, runner),
                                           shared=group))
        pending = [(r, s) for r, s in zip(runners, states) if s.metrics is None and s.todo]
        if pending:
            torch.manual_seed(first.seed)
            model, tokenizer = loaded or first.model.load()
            Evaluator(model, tokenizer, decode=decode, group=group).run(pending)
        metrics = []
        for runner, state in zip(runners, states):
            with current_run(runner.output_dir):
                metrics.append(state.metrics if state.metrics is not None else runner.finish(state))
        return metrics


def check_kernel(kernel: str, device: str) -> None:
    """``kernel=on`` needs the fused Triton kernel to run on ``device``: Triton and CUDA, or Triton's interpreter
    on a CPU (``TRITON_INTERPRET=1``)."""
    if kernel != "on":
        return
    from qpruning.backends import triton

    usable = triton.available() if device == "cuda" else triton.interpreting() and triton.triton_installed()
    if not usable:
        raise ConfigError(f"kernel=on, but the fused Triton kernel cannot run on {device} here (it needs Triton "
                          "and a CUDA device, or TRITON_INTERPRET=1 on a CPU)",
                          "allowed: kernel=auto (the kernel where it can run, else PyTorch), kernel=off, or "
                          "pip install -e .[gpu] on a GPU machine")


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"
