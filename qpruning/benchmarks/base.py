"""What every benchmark shares: the sample schema, prompt encoding with middle truncation, and the interface.

The runner only talks to :class:`Benchmark`: it asks for samples, encodes each one into token ids that fit the
model's window, generates, and hands the generated text back for scoring. Everything benchmark-specific
(official templates, metrics, data loading, generators) lives in the benchmark's own module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Sample:
    """One benchmark example, in a schema shared by all benchmarks.

    Args:
        id: unique within the benchmark run (stable across reruns: resumable runs key on it).
        task: the dataset or task name (``narrativeqa``, ``niah_single_1``, ``niah``...).
        context: the long document(s).
        input: the question or instruction that goes with the context (may be empty).
        answers: reference answers; metrics take the max over them.
        max_new_tokens: the generation length of this task.
        length: the input length used for bucketing (LongBench's ``length`` in words, or the target token
            length of a generated sample).
        extra: anything else a metric or report needs (``all_classes``, needle ``depth``, ``language``...).
    """

    id: str
    task: str
    context: str
    input: str
    answers: list[str]
    max_new_tokens: int
    length: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def truncate_middle(token_ids: Sequence[int], max_tokens: int) -> list[int]:
    """Keep the first and last halves of ``token_ids`` so that at most ``max_tokens`` remain (LongBench's rule)."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    token_ids = list(token_ids)
    if len(token_ids) <= max_tokens:
        return token_ids
    half = max_tokens // 2
    return token_ids[:half] + token_ids[len(token_ids) - (max_tokens - half) :]


class Benchmark(ABC):
    """A benchmark: a deterministic list of samples, their prompts, and their metric.

    Subclasses are dataclasses whose fields are the Hydra config of ``conf/benchmark/<name>.yaml``.
    """

    name: str = "benchmark"

    @abstractmethod
    def samples(self, tokenizer) -> Iterator[Sample]:
        """Yield the samples, deterministically for a given configuration and seed."""

    @abstractmethod
    def encode(self, sample: Sample, tokenizer, max_input_tokens: int, chat_template: bool = True) -> list[int]:
        """The prompt's token ids, truncated in the middle to at most ``max_input_tokens``."""

    @abstractmethod
    def score(self, sample: Sample, prediction: str) -> float:
        """The sample's score on a 0-100 scale."""

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Summaries of per-sample records (each has ``task``, ``score`` and ``length``).

        Returns at least ``score`` (the benchmark's headline number) and ``task_scores``; benchmarks add
        their own groupings (``category_scores``, ``length_scores``...).
        """
        ok = [r for r in records if r.get("status", "ok") == "ok"]
        by_task: dict[str, list[float]] = {}
        for record in ok:
            by_task.setdefault(record["task"], []).append(float(record["score"]))
        task_scores = {task: sum(v) / len(v) for task, v in sorted(by_task.items())}
        score = sum(task_scores.values()) / len(task_scores) if task_scores else float("nan")
        return {"score": score, "task_scores": task_scores}
