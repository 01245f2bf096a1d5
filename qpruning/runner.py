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
context window and its data. The Hydra entry (``run.py``) only builds a :class:`Runner` from the config
(:func:`runner_from_config`); the library itself does not need Hydra.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qpruning.benchmarks import Benchmark, SampleError
from qpruning.compressor import KVCompressor
from qpruning.errors import DataError, check_int
from qpruning.identity import input_files, resolved_config, run_hash
from qpruning.loggers import NullLogger, RunLogger
from qpruning.models import ModelSpec
from qpruning.records import RunFileError, append_jsonl, read_jsonl, write_json_atomic
from qpruning.runlock import RunLock, RunLockedError
from qpruning.transformers_api import cache_kwargs

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


@dataclass
class RunLabels:
    """How a run is named in ``metrics.json`` and reports (the knobs a person sweeps over)."""

    benchmark: str
    model: str
    pruner: str
    quant: str
    bits: int
    group_size: int
    tokens: int | None = None
    budget: float | None = None
    budget_mode: str = "nominal"
    layer_config: str | None = None
    experiment: str | None = None
    benchmark_variant: str | None = None


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
        check_int("seed", self.seed, minimum=0)

    @property
    def predictions_path(self) -> Path:
        return self.output_dir / PREDICTIONS

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS

    def validate(self):
        """Check everything that can be checked without weights; returns the model config."""
        model_config = self.model.load_config()
        self.compressor.plan(model_config)
        self.benchmark.validate(self.model.context_window)
        return model_config

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
        complete, covered = self._completed_limit()
        if covered and complete["limit"] == self.limit:
            logger.info("%s is complete already: nothing to do", self.output_dir)
            return complete
        _, samples = self.prepare()
        records = {r["id"]: r for r in read_predictions(self.predictions_path)}
        if covered and all(s.id in records for s in samples):  # a smaller limit than the one completed
            logger.info("%s is complete already (limit %s): the metrics of its first %d samples, metrics.json "
                        "unchanged", self.output_dir, complete["limit"], len(samples))
            return self._metrics([records[s.id] for s in samples], 0.0)
        logger.info("Run %s: %s on %s, %s", self.output_dir, self.labels.benchmark, self.model.name,
                    self.compressor.describe())
        todo = [s for s in samples if s.id not in records]
        if records:
            logger.info("Resuming: %d of %d samples already done", len(samples) - len(todo), len(samples))
        self.run_logger.start(self.config, self.output_dir)
        started = time.time()
        if todo:
            torch.manual_seed(self.seed)
            model, tokenizer = self.preloaded or self.model.load()
            done = [records[s.id] for s in samples if s.id in records]
            self._run_samples(model, tokenizer, todo, done, len(samples))
        by_id = {r["id"]: r for r in read_predictions(self.predictions_path)}
        ordered = [by_id[s.id] for s in samples]
        metrics = self._metrics(ordered, time.time() - started)
        write_json_atomic(self.metrics_path, metrics)
        self.run_logger.finish(metrics, ordered)
        score = metrics["score"] if metrics["score"] is not None else float("nan")
        logger.info("%s: score %.2f over %d samples (%d failed)", self.labels.benchmark, score,
                    metrics["samples"], metrics["failed"])
        return metrics

    def _run_samples(self, model, tokenizer, samples, done: list[dict[str, Any]], total: int) -> None:
        """Run ``samples``, appending each record; ``done`` are the records of earlier runs of this folder."""
        from tqdm.auto import tqdm

        done = list(done)

        is_crossentropy = hasattr(self.benchmark, "split")
        with self.compressor.attach(model), torch.inference_mode():
            progress = tqdm(samples, desc=f"{self.labels.benchmark} {self.labels.pruner} {self.labels.bits}-bit",
                            unit="sample", dynamic_ncols=True)
            for sample in progress:
                started = time.time()
                try:
                    if is_crossentropy:
                        record = self._cross_entropy_sample(model, tokenizer, sample)
                    else:
                        record = self._generate_sample(model, tokenizer, sample)
                except SampleError as exc:
                    logger.warning("sample %s failed: %s", sample.id, exc)
                    record = self._base_record(sample)
                    record.update(status="failed", error=str(exc), score=None)
                record["seconds"] = round(time.time() - started, 3)
                append_record(self.predictions_path, record)
                done.append(record)
                running = _finite(self.benchmark.aggregate(done).get("score"))
                self.run_logger.log_sample(record, done=len(done), total=total, running_score=running)
                if running is not None:
                    progress.set_postfix(score=f"{running:.1f}")

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
            "extra": dict(sample.extra),
        }

    def _cache_fields(self, record: dict[str, Any], cache) -> None:
        summary = cache.prefill_summary or cache.summary()
        record["kept_tokens"] = summary["kept_tokens"]
        record["kv_bytes"] = summary["kv_bytes"]
        record["kv_bytes_full"] = summary["kv_bytes_full"]

    def _generate_sample(self, model, tokenizer, sample) -> dict[str, Any]:
        record = self._base_record(sample)
        budget = self.benchmark.max_input_tokens(sample, self.model.context_window)
        ids = self.benchmark.encode(sample, tokenizer, budget, chat_template=self.model.chat_template)
        device = next(model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        kwargs = dict(self.benchmark.generation_kwargs(sample, tokenizer))
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        cache = self.compressor.new_cache(model)
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **cache_kwargs(model, cache), **kwargs)
        text = tokenizer.decode(output[0, len(ids):], skip_special_tokens=True)
        prediction = self.benchmark.postprocess(sample, text)
        record["prediction"] = prediction
        record["score"] = float(self.benchmark.score(sample, prediction))
        record["input_tokens"] = len(ids)
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


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


# -- building a run from a Hydra config ---------------------------------------------------------------------

def budget_label(tokens, budget, mode="nominal") -> str:
    """``t512`` for a token budget, ``b1_64`` for a fraction (``b1_64x`` in exact accounting)."""
    if tokens is not None:
        return f"t{tokens}"
    if budget is None:
        return "full"
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        return f"b{budget}"  # not a budget: the configuration's validation says so, the name must not crash
    inverse = 1 / float(budget)
    label = f"b1_{round(inverse)}" if abs(inverse - round(inverse)) < 1e-6 else f"b{float(budget):g}"
    return label + ("x" if mode == "exact" else "")


def register_resolvers() -> None:
    """OmegaConf resolvers used in ``conf/`` to name run folders (idempotent)."""
    from omegaconf import OmegaConf

    def folder_hash(*, _root_):
        return run_hash(resolved_config(_root_))

    if not OmegaConf.has_resolver("qp.budget"):
        OmegaConf.register_new_resolver("qp.budget", budget_label)
    if not OmegaConf.has_resolver("qp.hash"):
        OmegaConf.register_new_resolver("qp.hash", folder_hash)
    if not OmegaConf.has_resolver("qp.suffix"):
        OmegaConf.register_new_resolver("qp.suffix", lambda value: "" if value in (None, "") else f"-{value}")


def runner_from_config(cfg, output_dir: str | Path) -> Runner:
    """Build a :class:`Runner` from a composed Hydra config (``conf/config.yaml``)."""
    from omegaconf import OmegaConf

    from qpruning.checks import budget_is_default, build, check_logger, tokens_and_budget

    container = OmegaConf.to_container(cfg, resolve=True)
    model = build(cfg, "model")
    pruner = build(cfg, "pruner")
    quantizer = build(cfg, "quant")
    benchmark = build(cfg, "benchmark")
    check_logger(cfg)
    layers = container.get("layers") or []
    tokens, budget = tokens_and_budget(cfg)  # a typed tokens= wins over the default budget
    layer_config = cfg.get("layer_config")
    allocation = cfg.get("allocation")
    if allocation:
        from qpruning.optimize.allocation import Allocation

        found = Allocation.from_yaml(Path(allocation))
        layers = found.overrides()  # every layer's bits and tokens
        layer_config = layer_config or found.name
        if tokens is None and (budget is None or budget_is_default(cfg)):
            budget = found.meta.get("budget", budget)
    container["tokens"], container["budget"] = tokens, budget
    compressor = KVCompressor(
        pruner=pruner,
        quantizer=quantizer,
        tokens=tokens,
        budget=budget,
        budget_mode=cfg.budget_mode,
        full_cache_tokens=model.context_window if cfg.full_cache_tokens is None else cfg.full_cache_tokens,
        layers=layers,
        storage_dtype=cfg.get("storage_dtype"),
        kernel=cfg.get("kernel", "auto"),
        every_layer=bool(allocation),
    )
    labels = RunLabels(
        # The benchmark itself (niah, ruler...), not the config variant (niah_small, ruler_8k), which only
        # chooses samples: reports group runs by benchmark and benchmark_length.
        benchmark=type(benchmark).name,
        model=model.name,
        pruner=pruner.name,
        quant=quantizer.name,
        bits=quantizer.bits,
        group_size=quantizer.group_size,
        tokens=compressor.tokens,
        budget=compressor.budget,
        budget_mode=compressor.budget_mode,
        layer_config=layer_config,
        experiment=cfg.get("experiment_name"),
        benchmark_variant=cfg.benchmark.name,
    )
    run_logger = build(cfg, "logger") if cfg.get("logger") else NullLogger()
    return Runner(
        model=model,
        compressor=compressor,
        benchmark=benchmark,
        labels=labels,
        output_dir=Path(output_dir),
        limit=cfg.limit,
        seed=cfg.seed,
        config=container,
        run_logger=run_logger,
    )


def run_job(cfg) -> float | None:
    """What ``run.py`` does for one Hydra job: build, validate, run, print a short summary."""
    from hydra.core.hydra_config import HydraConfig

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    runner = runner_from_config(cfg, output_dir)
    try:
        metrics = runner.run()
    except (RunLockedError, RunFileError) as exc:  # one line, no traceback: the user can act on it
        print(f"qpruning: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
    print(summary_line(metrics, output_dir), flush=True)
    return metrics.get("score")


def summary_line(metrics: dict[str, Any], output_dir: Path) -> str:
    """One human-readable line per run."""
    budget = budget_label(metrics.get("tokens"), metrics.get("budget"), metrics.get("budget_mode", "nominal"))
    ratio = metrics.get("kv_ratio")
    score = metrics.get("score")
    return (
        f"[qpruning] {metrics['benchmark']} | {metrics['model']} | {metrics['pruner']} + {metrics['quant']} "
        f"{metrics['bits']}-bit g{metrics['group_size']} {budget} | score {score:.2f}"
        if score is not None
        else f"[qpruning] {metrics['benchmark']} | {metrics['model']} | score n/a"
    ) + (
        f" | kept {metrics['tokens_effective']:.0f} tokens | KV {100 * ratio:.1f}% of 16-bit"
        if ratio is not None and metrics.get("tokens_effective") is not None
        else ""
    ) + f" | {metrics['samples']} samples ({metrics['failed']} failed) in {metrics['seconds']:.0f}s -> {output_dir}"
