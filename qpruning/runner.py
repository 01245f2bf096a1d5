"""One run: a model, a compressor and a benchmark -> ``predictions.jsonl`` + ``metrics.json`` in a folder.

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

from qpruning.benchmarks import Benchmark, SampleError
from qpruning.benchmarks.base import EVALUATIONS
from qpruning.compressor import KVCompressor
from qpruning.errors import ConfigError, DataError, check_choice, check_int, check_seed, is_int
from qpruning.identity import RunLabels, input_files, run_hash
from qpruning.loggers import NullLogger, RunLogger
from qpruning.models import ModelSpec
from qpruning.records import append_jsonl, read_jsonl, write_json_atomic
from qpruning.runlock import RunLock
from qpruning.transformers_api import cache_kwargs

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


def _finite(value: float) -> float | None:
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
        shared: whether the run shares its time with others (:mod:`qpruning.grouped`): its ``seconds`` are then the
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
    """Run one benchmark on one model with one compressor, into ``output_dir``.

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

    def run(self) -> dict[str, Any]:
        """Run (or finish) the benchmark; returns the metrics.

        The folder is locked for this process (:class:`~qpruning.runlock.RunLock`: a second process stops with
        :class:`~qpruning.runlock.RunLockedError`). ``metrics.json`` covers the first ``limit`` samples (its
        ``limit`` field): a rerun with the same or a smaller limit returns at once (a smaller one: the metrics of
        its samples, computed from ``predictions.jsonl``, the file untouched); a larger one runs the samples
        still missing and rewrites ``metrics.json``.
        """
        with RunLock(self.output_dir):
            return self._run_locked()

    def _completed_limit(self) -> tuple[dict[str, Any] | None, bool]:
        """``(metrics.json, whether it covers this run's samples)``; ``(None, False)`` when there is none."""
        if not self.metrics_path.exists():
            return None, False
        metrics = json.loads(self.metrics_path.read_text())
        done_limit = metrics.get("limit", (metrics.get("config") or {}).get("limit"))
        metrics.setdefault("limit", done_limit)
        return metrics, done_limit is None or (self.limit is not None and self.limit <= done_limit)

    def _run_locked(self) -> dict[str, Any]:
        state = self.begin()
        if state.metrics is not None:
            return state.metrics
        if state.todo:
            torch.manual_seed(self.seed)
            model, tokenizer = self.preloaded or self.model.load()
            self._run_samples(model, tokenizer, state)
        return self.finish(state)

    def begin(self, live_logger: bool = True, prepare: Callable[[], tuple] | None = None) -> RunState:
        """What the run has left to do (call it holding the folder's lock: :meth:`run` does).

        A run complete already for its limit gets ``metrics`` set and nothing to do. ``live_logger``: start the
        run's logger now and send it each sample as it finishes (False: :meth:`finish` sends them all at the end,
        for runs that interleave in one process). ``prepare``: what gives ``(tokenizer, samples)`` (default:
        :meth:`prepare`; runs of one benchmark share them)."""
        complete, covered = self._completed_limit()
        if covered and complete["limit"] == self.limit:
            logger.info("%s is complete already: nothing to do", self.output_dir)
            return RunState([], [], [], time.time(), live_logger, metrics=complete)
        _, samples = (prepare or self.prepare)()
        records = {r["id"]: r for r in read_predictions(self.predictions_path)}
        if covered and all(s.id in records for s in samples):  # a smaller limit than the one completed
            logger.info("%s is complete already (limit %s): the metrics of its first %d samples, metrics.json "
                        "unchanged", self.output_dir, complete["limit"], len(samples))
            return RunState(samples, [], [], time.time(), live_logger,
                            metrics=self._metrics([records[s.id] for s in samples], 0.0))
        logger.info("Run %s: %s on %s, %s", self.output_dir, self.labels.benchmark, self.model.name,
                    self.compressor.describe())
        todo = [s for s in samples if s.id not in records]
        if records:
            logger.info("Resuming: %d of %d samples already done", len(samples) - len(todo), len(samples))
        if live_logger:
            self.run_logger.start(self.config, self.output_dir)
        done = [records[s.id] for s in samples if s.id in records]
        return RunState(samples, todo, done, time.time(), live_logger)

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

    def _run_samples(self, model, tokenizer, state: RunState) -> None:
        """Run the samples of ``state.todo``, appending each record."""
        from tqdm.auto import tqdm

        with self.compressor.attach(model), torch.inference_mode():
            progress = tqdm(state.todo, desc=f"{self.labels.benchmark} {self.labels.pruner} {self.labels.bits}-bit",
                            unit="sample", dynamic_ncols=True)
            for sample in progress:
                running = self.add_record(state, self.evaluate(model, tokenizer, sample))
                if running is not None:
                    progress.set_postfix(score=f"{running:.1f}")

    def evaluate(self, model, tokenizer, sample, prefill=None) -> dict[str, Any]:
        """One sample's record (a :class:`SampleError` gives a failed record), inside ``compressor.attach``.

        ``prefill``: a :class:`~qpruning.prefill.SharedPrefill` of this sample's prompt, recorded once for several
        runs; generation then starts from it (the same tokens), and the record's ``seconds`` include an even share
        of the recorded prefill (its ``share_seconds``)."""
        started = time.time()
        try:
            if self.benchmark.evaluation == "generate":
                record = self._generate_sample(model, tokenizer, sample, prefill)
            else:
                record = self._cross_entropy_sample(model, tokenizer, sample)
        except SampleError as exc:
            record = self.failed_record(sample, exc)
        share = prefill.share_seconds if prefill is not None else 0.0
        record["seconds"] = round(time.time() - started + share, 3)
        return record

    def failed_record(self, sample, exc: SampleError) -> dict[str, Any]:
        """The record of a sample that failed with ``exc`` (logged as a warning)."""
        logger.warning("sample %s failed: %s", sample.id, exc)
        record = self._base_record(sample)
        record.update(status="failed", error=str(exc), score=None)
        return record

    def add_record(self, state: RunState, record: dict[str, Any]) -> float | None:
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

    def _base_record(self, sample) -> dict[str, Any]:
        return {
            "id": sample.id,
            "task": sample.task,
            "status": "ok",
            "error": None,
            "prediction": None,
            "answers": sample.answers,
            "score": None,
            "length": sample.length,
            "input_tokens": None,
            "kept_tokens": None,
            "kv_bytes": None,
            "kv_bytes_full": None,
            "kv_bytes_global": None,
            "kv_bytes_full_global": None,
            "extra": dict(sample.extra),
        }

    def _cache_fields(self, record: dict[str, Any], cache) -> None:
        summary = cache.prefill_summary or cache.summary()
        record["kept_tokens"] = summary["kept_tokens"]
        record["kv_bytes"] = summary["kv_bytes"]
        record["kv_bytes_full"] = summary["kv_bytes_full"]
        # the global layers alone: what a budget is a fraction of (the totals, without sliding-window layers)
        record["kv_bytes_global"] = summary["kv_bytes_global"]
        record["kv_bytes_full_global"] = summary["kv_bytes_full_global"]

    def prompt(self, model, tokenizer, sample) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(input_ids [1, seq] on the model's device, generate's keyword arguments)`` of a sample."""
        max_input = self.benchmark.max_input_tokens(sample, self.model.context_window)
        ids = self.benchmark.encode(sample, tokenizer, max_input, chat_template=self.model.chat_template)
        device = next(model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        kwargs = dict(self.benchmark.generation_kwargs(sample, tokenizer))
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        return input_ids, kwargs

    def _generate_sample(self, model, tokenizer, sample, prefill=None) -> dict[str, Any]:
        input_ids, kwargs = self.prompt(model, tokenizer, sample)
        cache = self.compressor.new_cache(model)
        shared = prefill.replayed(model, self.compressor, cache) if prefill is not None else contextlib.nullcontext()
        with shared:
            output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **cache_kwargs(model, cache),
                                    **kwargs)
        return self.generated_record(sample, tokenizer, output[0, input_ids.shape[1]:], input_ids.shape[1], cache)

    def generated_record(self, sample, tokenizer, new_tokens, input_tokens: int, cache) -> dict[str, Any]:
        """A generated sample's record: its prediction and score from ``new_tokens``, the cache's sizes after
        prefill."""
        record = self._base_record(sample)
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        prediction = self.benchmark.postprocess(sample, text)
        record["prediction"] = prediction
        record["score"] = float(self.benchmark.score(sample, prediction))
        record["input_tokens"] = input_tokens
        record["extra"].update(self.benchmark.details(sample, prediction))
        self._cache_fields(record, cache)
        return record

    def _cross_entropy_sample(self, model, tokenizer, sample) -> dict[str, Any]:
        from qpruning.benchmarks import continuation_cross_entropy

        record = self._base_record(sample)
        prefix, continuation = self.benchmark.split(sample, tokenizer)
        cache = self.compressor.new_cache(model)
        value = continuation_cross_entropy(model, prefix, continuation, cache=cache)
        record["prediction"] = None
        record["score"] = float(self.benchmark.score(sample, value))
        record["input_tokens"] = len(prefix)
        self._cache_fields(record, cache)
        return record

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
