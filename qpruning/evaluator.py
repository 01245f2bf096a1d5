"""The sample loop of one run or of many: each sample's record for every run that still lacks it.

A run (:class:`~qpruning.runner.Runner`) stores its records; this module makes them. :class:`Evaluator` takes the
runs that share a model and a benchmark's samples (one run is a group of one), and for each sample the runs still
lacking it, with a decode strategy (:data:`DECODES`):

- ``alone``: each run prefills and decodes the sample on its own (``model.generate`` with its compressed cache);
- ``shared``: when more than one run lacks the sample, its prefill is run once (:class:`~qpruning.prefill.SharedPrefill`)
  and each run's cache built from it, then each run decodes alone, as with ``alone``: the same tokens;
- ``batched``: as ``shared``, and the runs whose caches stack (the same quantizer and layout) decode as the rows of
  one batch (:func:`~qpruning.cache.stack.stack_caches`): fewer decode steps, but a batch's arithmetic can differ
  from one row's in the last bits, and so, rarely, a token (results/bench/sweep/README.md).

Generation is one function (:meth:`Evaluator.generate`: ``model.generate`` of one row or of several, each row's new
tokens up to its first end-of-sequence token) and records are built by the functions below, the same for every
strategy. A record's ``seconds`` are its own compression and decoding plus an even share of a shared prefill.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from qpruning.benchmarks import Benchmark, SampleError
from qpruning.cache.stack import stack_caches, stackable
from qpruning.compressor import KVCompressor
from qpruning.errors import check_choice
from qpruning.identity import RunLabels
from qpruning.loggers import current_run
from qpruning.models import ModelSpec
from qpruning.prefill import SharedPrefill, queries_needed
from qpruning.transformers_api import cache_kwargs

logger = logging.getLogger(__name__)

DECODES = ("alone", "shared", "batched")


class EvaluatedRun(Protocol):
    """What the evaluator needs of a run (:class:`~qpruning.runner.Runner` is one)."""

    model: ModelSpec
    compressor: KVCompressor
    benchmark: Benchmark
    labels: RunLabels
    output_dir: Path

    def append(self, state: Any, record: dict[str, Any]) -> float | None:
        """Store ``record`` (durable before the next sample); returns the run's running score."""


class RunProgress(Protocol):
    """What the evaluator reads of a run's state (:class:`~qpruning.runner.RunState` is one)."""

    samples: list
    todo: list


# -- records -------------------------------------------------------------------------------------------------------


def base_record(sample) -> dict[str, Any]:
    """A sample's record before anything ran: every field, its status ``ok``."""
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


def failed_record(sample, exc: SampleError) -> dict[str, Any]:
    """The record of a sample that failed with ``exc`` (logged as a warning)."""
    logger.warning("sample %s failed: %s", sample.id, exc)
    record = base_record(sample)
    record.update(status="failed", error=str(exc), score=None)
    return record


def _cache_fields(record: dict[str, Any], cache) -> None:
    summary = cache.prefill_summary or cache.summary()
    record["kept_tokens"] = summary["kept_tokens"]
    record["kv_bytes"] = summary["kv_bytes"]
    record["kv_bytes_full"] = summary["kv_bytes_full"]
    # the global layers alone: what a budget is a fraction of (the totals, without sliding-window layers)
    record["kv_bytes_global"] = summary["kv_bytes_global"]
    record["kv_bytes_full_global"] = summary["kv_bytes_full_global"]


def generated_record(benchmark: Benchmark, sample, tokenizer, new_tokens, input_tokens: int, cache) -> dict[str, Any]:
    """A generated sample's record: its prediction and score from ``new_tokens``, the cache's sizes after prefill."""
    record = base_record(sample)
    text = tokenizer.decode(new_tokens, skip_special_tokens=True)
    prediction = benchmark.postprocess(sample, text)
    record["prediction"] = prediction
    record["score"] = float(benchmark.score(sample, prediction))
    record["input_tokens"] = input_tokens
    record["extra"].update(benchmark.details(sample, prediction))
    _cache_fields(record, cache)
    return record


def prompt(run: EvaluatedRun, model, tokenizer, sample) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(input_ids [1, seq] on the model's device, generate's keyword arguments)`` of a sample in ``run``."""
    max_input = run.benchmark.max_input_tokens(sample, run.model.context_window)
    ids = run.benchmark.encode(sample, tokenizer, max_input, chat_template=run.model.chat_template)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    kwargs = dict(run.benchmark.generation_kwargs(sample, tokenizer))
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    return input_ids, kwargs


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """A row's new tokens up to its first end-of-sequence token (included): what follows is padding."""
    end = next((i + 1 for i, token in enumerate(tokens) if token in eos), len(tokens))
    return tokens[:end]


# -- the loop --------------------------------------------------------------------------------------------------------

Pending = Sequence[tuple[EvaluatedRun, RunProgress]]


@dataclass
class Evaluator:
    """Each sample's record for the runs of ``pending`` that lack it, on one loaded model.

    Args:
        model: the loaded model, every run's.
        tokenizer: its tokenizer.
        decode: ``alone``, ``shared`` or ``batched`` (the module docstring).
        group: whether the runs are a group (their progress bar and log lines say so); one run is not.
    """

    model: Any
    tokenizer: Any
    decode: str = "shared"
    group: bool = False

    def __post_init__(self) -> None:
        check_choice("decode", self.decode, DECODES)

    def run(self, pending: Pending) -> None:
        """Every sample of ``pending``'s runs' ``todo``, in the runs' order of samples; each record appended to
        its run (:meth:`EvaluatedRun.append`) as soon as it is made."""
        from tqdm.auto import tqdm

        todo = [{s.id for s in state.todo} for _, state in pending]
        samples = [s for s in pending[0][1].samples if any(s.id in ids for ids in todo)]
        first = pending[0][0]
        if self.group:
            logger.info("Group of %d runs on %s, %s (%s): one prefill per sample for all of them, %d samples",
                        len(pending), first.model.name, first.labels.benchmark_variant or first.labels.benchmark,
                        ", ".join(run.compressor.describe() for run, _ in pending), len(samples))
            desc = f"{first.labels.benchmark} x {len(pending)} configurations"
        else:
            desc = f"{first.labels.benchmark} {first.labels.pruner} {first.labels.bits}-bit"
        progress = tqdm(samples, desc=desc, unit="sample", dynamic_ncols=True)
        shares = self.decode != "alone" and first.benchmark.evaluation == "generate"
        with torch.inference_mode():
            for sample in progress:
                needing = [(r, s) for (r, s), ids in zip(pending, todo) if sample.id in ids]
                prefill = self._prefill(sample, needing) if shares and len(needing) > 1 else None
                batches = self._decode_batches(needing) if self.decode == "batched" and prefill else [needing]
                for batch in batches:
                    batched = self.decode == "batched" and prefill is not None and len(batch) > 1
                    together = self._decode_together(sample, prefill, batch) if batched and prefill is not None else {}
                    for i, (run, state) in enumerate(batch):
                        with current_run(run.output_dir), run.compressor.attach(self.model):
                            record = together[i] if i in together else self.evaluate(run, sample, prefill)
                            running = run.append(state, record)
                        if not self.group and running is not None:
                            progress.set_postfix(score=f"{running:.1f}")
                del prefill

    def evaluate(self, run: EvaluatedRun, sample, prefill: SharedPrefill | None = None) -> dict[str, Any]:
        """One sample's record in ``run`` (a :class:`SampleError` gives a failed record), inside
        ``run.compressor.attach``. ``prefill``: the sample's prompt recorded once for several runs; generation then
        starts from it, and the record's ``seconds`` include its share of the recorded prefill."""
        started = time.time()
        try:
            if run.benchmark.evaluation == "generate":
                record = self._generated(run, sample, prefill)
            else:
                record = self._cross_entropy(run, sample)
        except SampleError as exc:
            record = failed_record(sample, exc)
        share = prefill.share_seconds if prefill is not None else 0.0
        record["seconds"] = round(time.time() - started + share, 3)
        return record

    def generate(self, input_ids: torch.Tensor, kwargs: dict[str, Any], cache, rows: int = 1,
                 replay: contextlib.AbstractContextManager | None = None) -> list[list[int]]:
        """``model.generate`` of ``rows`` copies of the prompt with ``cache`` (``replay``: within which the prefill
        comes from a recording); each row's new tokens up to its first end-of-sequence token."""
        ids = input_ids if rows == 1 else input_ids.expand(rows, -1)
        with replay or contextlib.nullcontext():
            output = self.model.generate(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(self.model, cache),
                                         **kwargs)
        eos = kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
        eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        return [until_eos(output[row, input_ids.shape[1]:].tolist(), eos) for row in range(rows)]

    def _generated(self, run: EvaluatedRun, sample, prefill: SharedPrefill | None) -> dict[str, Any]:
        input_ids, kwargs = prompt(run, self.model, self.tokenizer, sample)
        cache = run.compressor.new_cache(self.model)
        replay = prefill.replayed(self.model, run.compressor, cache) if prefill is not None else None
        (tokens,) = self.generate(input_ids, kwargs, cache, replay=replay)
        return generated_record(run.benchmark, sample, self.tokenizer, tokens, input_ids.shape[1], cache)

    def _cross_entropy(self, run: EvaluatedRun, sample) -> dict[str, Any]:
        from qpruning.benchmarks import CrossEntropy, continuation_cross_entropy

        benchmark = run.benchmark
        if not isinstance(benchmark, CrossEntropy):  # evaluation="cross_entropy" is CrossEntropy's
            raise TypeError(f"{benchmark.name}: evaluation='cross_entropy' needs a CrossEntropy benchmark")
        record = base_record(sample)
        prefix, continuation = benchmark.split(sample, self.tokenizer)
        cache = run.compressor.new_cache(self.model)
        value = continuation_cross_entropy(self.model, prefix, continuation, cache=cache)
        record["prediction"] = None
        record["score"] = float(benchmark.score(sample, value))
        record["input_tokens"] = len(prefix)
        _cache_fields(record, cache)
        return record

    # -- shared prefill, batched decoding ----------------------------------------------------------------------

    def _prefill(self, sample, needing: Pending) -> SharedPrefill | None:
        """The sample's prefill, once for ``needing``; None when its prompt fails (each run records the failure)."""
        run = needing[0][0]
        try:
            input_ids, kwargs = prompt(run, self.model, self.tokenizer, sample)
        except SampleError:
            return None
        queries = queries_needed(r.compressor for r, _ in needing)
        prefill = SharedPrefill.record(self.model, run.compressor, input_ids, kwargs, queries)
        prefill.sharers = len(needing)
        logger.debug("sample %s: one prefill of %d tokens in %.2fs for %d runs (%s queries kept)", sample.id,
                     input_ids.shape[1], prefill.seconds, len(needing), "all" if queries is None else queries)
        return prefill

    def _decode_batches(self, needing: Pending) -> list[Pending]:
        """``needing`` in batches of runs with the same quantizer, storage and per-layer bits."""
        batches: dict[tuple, list[tuple[EvaluatedRun, RunProgress]]] = {}
        for run, state in needing:
            compressor = run.compressor
            key = (repr(compressor.quantizer), compressor.storage_dtype, compressor.kernel, compressor.compat,
                   tuple(plan.bits for plan in compressor.plan(self.model.config)))
            batches.setdefault(key, []).append((run, state))
        return list(batches.values())

    def _decode_together(self, sample, prefill: SharedPrefill, batch: Pending) -> dict[int, dict[str, Any]]:
        """The records of ``batch``'s runs decoded as the rows of batches, by their index in ``batch``: the runs
        whose caches stack (:func:`stackable`: the same layout layer by layer) decode together, one batch per such
        set; a run whose cache stacks with no other decodes alone from the cache already filled (each run's cache
        is compressed once). Empty when the prompt fails (each run then records the failure on its own)."""
        try:
            input_ids, kwargs = prompt(batch[0][0], self.model, self.tokenizer, sample)
        except SampleError:
            return {}
        caches, fill_started = [], time.time()
        for run, _ in batch:
            caches.append(run.compressor.new_cache(self.model))
            prefill.fill(run.compressor, caches[-1])
        fill_seconds = (time.time() - fill_started) / len(batch)
        records: dict[int, dict[str, Any]] = {}
        for indices in _stacking_sets(caches):
            started = time.time()
            members = [caches[i] for i in indices]
            rows = len(indices)
            decoded = stack_caches(members) if rows > 1 else members[0]
            lead = batch[indices[0]][0]
            replay = contextlib.ExitStack()
            replay.enter_context(lead.compressor.attach(self.model))
            replay.enter_context(prefill.replayed_rows(self.model, decoded, lambda: None, rows))
            outputs = self.generate(input_ids, kwargs, decoded, rows=rows, replay=replay)
            seconds = round((time.time() - started) / rows + fill_seconds + prefill.share_seconds, 3)
            for index, cache, tokens in zip(indices, members, outputs):
                run = batch[index][0]
                try:
                    record = generated_record(run.benchmark, sample, self.tokenizer, tokens, input_ids.shape[1], cache)
                except SampleError as exc:
                    record = failed_record(sample, exc)
                record["seconds"] = seconds
                records[index] = record
            if rows > 1:
                logger.debug("sample %s: %d runs decoded as one batch in %.2fs", sample.id, rows, time.time() - started)
            else:
                logger.debug("sample %s: %s decoded alone (its cache stacks with no other of its batch)", sample.id,
                             lead.output_dir.name)
        return records


def _stacking_sets(caches: Iterable) -> list[list[int]]:
    """The caches' indices in sets whose caches stack, each set's layout compared with its first cache's (greedy
    is exact: stacking is an equivalence of layouts)."""
    caches = list(caches)
    sets: list[list[int]] = []
    for index, cache in enumerate(caches):
        home = next((s for s in sets if stackable([caches[s[0]], cache])), None)
        if home is None:
            sets.append([index])
        else:
            home.append(index)
    return sets
