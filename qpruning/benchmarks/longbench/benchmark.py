"""LongBench and LongBench-E as :class:`~qpruning.benchmarks.base.Benchmark` s (THUDM/LongBench v1, ``pred.py``
and ``eval.py``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from qpruning.errors import check_dataclass_fields, check_real

from ..base import (
    Benchmark,
    BenchmarkConfigError,
    Sample,
    SampleError,
    benchmark_errors,
    encode_prompt,
    newline_token_ids,
)
from . import data as lb_data
from .metrics import sample_score
from .prompts import (
    ALL_DATASETS,
    CATEGORIES,
    DATASET2MAXLEN,
    DATASET2PROMPT,
    E_DATASETS,
    ENGLISH_DATASETS,
    LENGTH_BUCKETS,
    NO_CHAT_TEMPLATE,
    PAPER_E_DATASETS,
    STOP_AT_NEWLINE,
    length_bucket,
)

logger = logging.getLogger(__name__)

MIN_PROMPT_TOKENS = 256


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class LongBench(Benchmark):
    """LongBench (21 datasets, 16 English and 5 Chinese), with the official prompts, lengths and metrics.

    Prompts: ``DATASET2PROMPT[dataset].format(context=..., input=...)``, wrapped in the model's chat template
    except for trec, triviaqa, samsum, lsht, lcc and repobench-p (LongBench's ``pred.py``). The prompt is cut in
    the middle so that it fits ``max_input_tokens`` (the runner passes the window minus the dataset's generation
    length, :meth:`max_input_tokens`). Scores: ``eval.py``'s, 0-100 per sample.

    Args:
        datasets: dataset names; ``None`` means the 16 English datasets (the paper's list). Use
            ``qpruning.benchmarks.longbench.ALL_DATASETS`` for all 21.
        data_dir: a folder with the official ``<name>.jsonl`` files (``scripts/download_longbench.py``);
            ``None`` looks in the qpruning cache, then on the hub when it is reachable.
        limit: keep only the first ``limit`` samples of each dataset (quick runs); ``None`` keeps all.
        chat_template: wrap prompts in the tokenizer's chat template where LongBench does (the paper's own code,
            zhzihao/QPruningKV, feeds raw prompts to Llama-3: set false to reproduce that).
        hub_timeout: seconds to wait for the hub before declaring it unreachable (no retries).
    """

    datasets: list[str] | str | None = None
    data_dir: str | None = None
    limit: int | None = None
    chat_template: bool = True
    hub_timeout: float = 3.0

    name: ClassVar[str] = "longbench"
    e: ClassVar[bool] = False
    valid_datasets: ClassVar[tuple[str, ...]] = ALL_DATASETS
    default_datasets: ClassVar[tuple[str, ...]] = ENGLISH_DATASETS

    def __post_init__(self) -> None:
        with benchmark_errors():
            check_dataclass_fields("benchmark", self)
            check_real("benchmark.hub_timeout", self.hub_timeout, low=0.0, meaning="seconds")
        if self.datasets is None:
            self.datasets = list(self.default_datasets)
        elif isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        self.datasets = list(self.datasets)
        unknown = [d for d in self.datasets if d not in self.valid_datasets]
        if unknown:
            raise BenchmarkConfigError(
                f"benchmark.datasets: unknown {self.name} dataset(s) {', '.join(map(repr, unknown))}",
                f"valid: {', '.join(self.valid_datasets)}",
            )
        if not self.datasets:
            raise BenchmarkConfigError(
                f"{self.name}: datasets is empty; valid: {', '.join(self.valid_datasets)}"
            )
        if self.limit is not None and self.limit < 1:
            raise BenchmarkConfigError(
                f"benchmark.limit={self.limit} is not positive", "allowed: samples per dataset >= 1, or null"
            )

    @property
    def dataset_names(self) -> list[str]:
        """``datasets`` as :meth:`__post_init__` leaves it: a list of names."""
        assert isinstance(self.datasets, list)
        return self.datasets

    # -- configuration checks ------------------------------------------------------------------------------------

    def validate(self, context_window: int) -> None:
        super().validate(context_window)
        longest = max(DATASET2MAXLEN[d] for d in self.dataset_names)
        if context_window - longest < MIN_PROMPT_TOKENS:
            raise BenchmarkConfigError(
                f"A context window of {context_window} tokens cannot hold {self.name}: the datasets generate up to "
                f"{longest} tokens, which leaves {context_window - longest} tokens for the prompt "
                f"(at least {MIN_PROMPT_TOKENS} needed)", "allowed: a model with a longer context window"
            )

    def longest_prompt(self, context_window: int) -> int:
        return context_window - min(DATASET2MAXLEN[d] for d in self.dataset_names)  # prompts are cut to fit

    # -- samples ---------------------------------------------------------------------------------------------------

    def samples(self, tokenizer=None) -> Iterator[Sample]:
        """The samples of every dataset, in file order (the tokenizer is not needed: prompts are built in
        :meth:`encode`). Missing data raises :class:`DataNotFoundError` before the first sample."""
        files = lb_data.resolve_files(
            self.dataset_names, e=self.e, data_dir=self.data_dir, hub_timeout=self.hub_timeout
        )
        for dataset in self.dataset_names:
            records = lb_data.read_jsonl(files[dataset])
            if self.limit is not None:
                records = records[: self.limit]
            logger.info("%s %s: %d samples from %s", self.name, dataset, len(records), files[dataset])
            for record in records:
                yield self.make_sample(dataset, record)

    def make_sample(self, dataset: str, record: dict[str, Any]) -> Sample:
        """A :class:`Sample` from one official jsonl record."""
        answers = record.get("answers") or []
        if isinstance(answers, str):
            answers = [answers]
        return Sample(
            id=f"{dataset}{'_e' if self.e else ''}-{record['_id']}",
            task=dataset,
            context=record.get("context") or "",
            input=record.get("input") or "",
            answers=[str(a) for a in answers],
            max_new_tokens=DATASET2MAXLEN[dataset],
            length=record.get("length"),
            extra={
                "all_classes": record.get("all_classes"),
                "language": record.get("language"),
                "_id": record["_id"],
                "category": next(c for c, ds in CATEGORIES.items() if dataset in ds),
            },
        )

    # -- prompts and generation ------------------------------------------------------------------------------------

    def prompt(self, sample: Sample) -> str:
        """The official prompt text, before any chat template."""
        return DATASET2PROMPT[sample.task].format(context=sample.context, input=sample.input)

    def uses_chat_template(self, sample: Sample, chat_template: bool = True) -> bool:
        return chat_template and self.chat_template and sample.task not in NO_CHAT_TEMPLATE

    def encode(
        self, sample: Sample, tokenizer, max_input_tokens: int, chat_template: bool = True
    ) -> list[int]:
        return encode_prompt(
            tokenizer, self.prompt(sample), max_input_tokens, self.uses_chat_template(sample, chat_template)
        )

    def generation_kwargs(self, sample: Sample, tokenizer) -> dict[str, Any]:
        kwargs = super().generation_kwargs(sample, tokenizer)
        if sample.task in STOP_AT_NEWLINE:
            # pred.py: samsum stops at "\n" as well, and must generate at least one token.
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            kwargs["eos_token_id"] = eos + newline_token_ids(tokenizer)
            kwargs["min_new_tokens"] = 1
        return kwargs

    # -- scores ------------------------------------------------------------------------------------------------------

    def score(self, sample: Sample, prediction: str) -> float:
        """eval.py's sample score x 100: first-line cut for trec/triviaqa/samsum/lsht, max over references."""
        if not sample.answers:
            raise SampleError(f"sample {sample.id} has no reference answer")
        try:
            return 100.0 * sample_score(
                sample.task, prediction, sample.answers, sample.extra.get("all_classes")
            )
        except (ValueError, KeyError) as exc:
            raise SampleError(f"cannot score sample {sample.id}: {exc}") from exc

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``score`` (mean over datasets of the dataset means), ``task_scores``, ``category_scores`` (mean over the
        datasets of each Table 2 category that were run), ``length_scores`` (LongBench-E buckets: per bucket, the
        mean over datasets of each dataset's bucket mean) and ``task_length_scores`` (dataset -> bucket -> score)."""
        ok = [r for r in records if r.get("status", "ok") == "ok" and r.get("score") is not None]
        by_task: dict[str, list[float]] = {}
        by_task_bucket: dict[str, dict[str, list[float]]] = {}
        for record in ok:
            by_task.setdefault(record["task"], []).append(float(record["score"]))
            if record.get("length") is not None:
                bucket = length_bucket(record["length"])
                by_task_bucket.setdefault(record["task"], {}).setdefault(bucket, []).append(
                    float(record["score"])
                )
        task_scores = {t: _mean(by_task[t]) for t in self.valid_datasets if t in by_task}
        category_scores = {}
        for category, members in CATEGORIES.items():
            present = [task_scores[t] for t in members if t in task_scores]
            if present:
                category_scores[category] = _mean(present)
        task_length_scores = {
            t: {b: _mean(by_task_bucket[t][b]) for b in LENGTH_BUCKETS if b in by_task_bucket[t]}
            for t in self.valid_datasets
            if t in by_task_bucket
        }
        length_scores = {}
        for bucket in LENGTH_BUCKETS:
            present = [scores[bucket] for scores in task_length_scores.values() if bucket in scores]
            if present:
                length_scores[bucket] = _mean(present)
        return {
            "score": _mean(list(task_scores.values())),
            "task_scores": task_scores,
            "category_scores": category_scores,
            "length_scores": length_scores,
            "task_length_scores": task_length_scores,
        }


@dataclass
class LongBenchE(LongBench):
    """LongBench-E: the ``<name>_e`` subsets, with a uniform spread of lengths, scored per length bucket
    (0-4k, 4-8k, 8k+ words). ``datasets`` defaults to the paper's seven (Appendix A: MultiFieldQA-en,
    2WikiMQA, GovReport, TREC, TriviaQA, SAMSum, RepoBench-P); all 13 E datasets are valid."""

    name: ClassVar[str] = "longbench_e"
    e: ClassVar[bool] = True
    valid_datasets: ClassVar[tuple[str, ...]] = E_DATASETS
    default_datasets: ClassVar[tuple[str, ...]] = PAPER_E_DATASETS
