"""What every benchmark shares: the sample schema, prompt encoding with middle truncation, and the interface.

The runner only talks to :class:`Benchmark`: it asks for samples, encodes each one into token ids that fit the
model's window, generates, and hands the generated text back for scoring. Everything benchmark-specific
(official templates, metrics, data loading, generators) lives in the benchmark's own module.

The runner's loop, in full::

    bench = build(cfg, "benchmark")   # qpruning.app: get_benchmark(name, **fields), plain values
    bench.validate(context_window)                                # before loading the model
    for sample in bench.samples(tokenizer):
        try:
            ids = bench.encode(sample, tokenizer, bench.max_input_tokens(sample, context_window))
            out = model.generate(ids, **bench.generation_kwargs(sample, tokenizer))
            prediction = bench.postprocess(sample, tokenizer.decode(new_tokens, skip_special_tokens=True))
            score = bench.score(sample, prediction)
            extra = {**sample.extra, **bench.details(sample, prediction)}
        except SampleError as err:                                # recorded as status "failed", run goes on
            ...
    metrics = bench.aggregate(records)

Errors: :class:`BenchmarkConfigError` (a configuration the benchmark cannot run: unknown dataset or task names,
a length the model cannot hold), :class:`DataNotFoundError` (data missing; the message says how to get it) and
:class:`SampleError` (one sample cannot be built or scored; the runner records it as failed and goes on).
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from qpruning.errors import ConfigError, MissingFileError

logger = logging.getLogger(__name__)

CHAT_DATE_STRING = "26 Jul 2024"
"""The date Llama-3.1/3.2 chat templates fall back to; passed so that prompts do not depend on the day."""


class BenchmarkConfigError(ConfigError):
    """A benchmark configuration that cannot run (unknown names, impossible lengths). Raised before any model work."""


@contextlib.contextmanager
def benchmark_errors() -> Iterator[None]:
    """Within the block, a :class:`ConfigError` of a ``check_*`` helper is raised as a :class:`BenchmarkConfigError`
    (what a benchmark's checks raise)."""
    try:
        yield
    except BenchmarkConfigError:
        raise
    except ConfigError as exc:
        raise BenchmarkConfigError(exc.what, exc.allowed) from None


class DataNotFoundError(MissingFileError):
    """Benchmark data is missing and cannot be fetched; the message names the files and how to get them."""


class SampleError(RuntimeError):
    """One sample cannot be built or scored (tokenizer error, empty answer...).

    The runner records the sample with ``status="failed"`` and ``error=str(exc)`` and goes on with the next one.
    """


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


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template (base models and tiny test tokenizers may not)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, user_text: str, chat_template: bool = True, assistant_prefix: str = "") -> str:
    """The prompt text: ``user_text`` wrapped in the tokenizer's chat template (one user turn and the generation
    prompt) when ``chat_template`` is true and the tokenizer has one, followed by ``assistant_prefix`` (RULER's
    answer prefix, which the official code appends after the model template)."""
    if chat_template and has_chat_template(tokenizer):
        # Llama-3.1/3.2 templates write today's date into the system turn unless `date_string` is given: pin it
        # to the templates' own fallback so that prompts (and cached RULER samples) do not change from day to day.
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}],
            tokenize=False,
            add_generation_prompt=True,
            date_string=CHAT_DATE_STRING,
        )
    else:
        text = user_text
    return text + assistant_prefix


def tokenize_prompt(tokenizer, text: str, chat_template: bool = True) -> list[int]:
    """Token ids of a rendered prompt.

    A chat-rendered prompt already holds the model's special tokens (e.g. Llama-3's ``<|begin_of_text|>``), so it
    is tokenized without adding them again; a plain prompt gets the tokenizer's usual BOS, as in LongBench's
    ``pred.py`` (``tokenizer(prompt)``).
    """
    add_special = not (chat_template and has_chat_template(tokenizer))
    try:
        return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    except Exception as exc:  # a tokenizer failure is a per-sample failure, not a crash of the run
        raise SampleError(f"tokenizer failed on the prompt: {type(exc).__name__}: {exc}") from exc


def encode_prompt(
    tokenizer,
    user_text: str,
    max_input_tokens: int,
    chat_template: bool = True,
    assistant_prefix: str = "",
) -> list[int]:
    """Render and tokenize a prompt, truncating ``user_text`` in the middle until the whole prompt fits.

    LongBench's rule (``pred.py``): tokenize the prompt, keep the first and last halves of the tokens, decode both
    halves and build the (chat) prompt from the decoded text. Decoding and re-encoding can shift the count by a
    token or two, so the budget is tightened and retried until the final ids fit; a last resort cuts the final
    ids in the middle.
    """
    if max_input_tokens <= 0:
        raise SampleError(f"no room for the prompt: max_input_tokens={max_input_tokens}")
    ids = tokenize_prompt(
        tokenizer, render_prompt(tokenizer, user_text, chat_template, assistant_prefix), chat_template
    )
    if len(ids) <= max_input_tokens:
        return ids
    try:
        user_ids = list(tokenizer(user_text, add_special_tokens=False)["input_ids"])
    except Exception as exc:
        raise SampleError(f"tokenizer failed on the prompt: {type(exc).__name__}: {exc}") from exc
    overhead = len(ids) - len(user_ids)
    budget = max_input_tokens - overhead
    for _ in range(4):
        if budget <= 1:
            break
        half = budget // 2
        text = tokenizer.decode(user_ids[:half], skip_special_tokens=True) + tokenizer.decode(
            user_ids[len(user_ids) - (budget - half) :], skip_special_tokens=True
        )
        ids = tokenize_prompt(
            tokenizer, render_prompt(tokenizer, text, chat_template, assistant_prefix), chat_template
        )
        if len(ids) <= max_input_tokens:
            return ids
        budget -= len(ids) - max_input_tokens
    if budget <= 1:
        raise SampleError(
            f"the prompt template alone ({overhead} tokens) does not fit in max_input_tokens={max_input_tokens}"
        )
    return truncate_middle(ids, max_input_tokens)


def newline_token_ids(tokenizer) -> list[int]:
    """The id of ``"\\n"`` as LongBench's ``pred.py`` finds it (``tokenizer.encode("\\n")[-1]``)."""
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    return [ids[-1]] if ids else []


EVALUATIONS = ("generate", "cross_entropy")
"""The values of :attr:`Benchmark.evaluation`."""


class Benchmark(ABC):
    """A benchmark: a deterministic list of samples, their prompts, and their metric.

    Subclasses are dataclasses whose fields are the Hydra config of ``conf/benchmark/<name>.yaml``.
    """

    name: ClassVar[str] = "benchmark"
    evaluation: ClassVar[Literal["generate", "cross_entropy"]] = "generate"
    """How the runner evaluates a sample: ``generate`` (greedy generation, then :meth:`postprocess` and
    :meth:`score`) or ``cross_entropy`` (the cross-entropy of a continuation after a compressed prefix: the
    benchmark has ``split(sample, tokenizer) -> (prefix ids, continuation ids)`` and scores the value)."""

    @abstractmethod
    def samples(self, tokenizer) -> Iterator[Sample]:
        """Yield the samples, deterministically for a given configuration and seed."""

    @abstractmethod
    def encode(
        self, sample: Sample, tokenizer, max_input_tokens: int, chat_template: bool = True
    ) -> list[int]:
        """The prompt's token ids, truncated in the middle to at most ``max_input_tokens``."""

    @abstractmethod
    def score(self, sample: Sample, prediction: str) -> float:
        """The sample's score on a 0-100 scale."""

    # -- optional hooks, with defaults that suit most benchmarks ------------------------------------------------

    def validate(self, context_window: int) -> None:
        """Raise :class:`BenchmarkConfigError` if this configuration cannot run in ``context_window`` tokens.

        Called by the runner before it loads the model, so that a bad configuration fails in a second.
        """
        if context_window <= 0:
            raise BenchmarkConfigError(f"context_window={context_window} is not positive", "allowed: >= 1")

    def max_input_tokens(self, sample: Sample, context_window: int) -> int:
        """The prompt budget: the window minus the room reserved for the sample's generation."""
        return context_window - sample.max_new_tokens

    def longest_prompt(self, context_window: int) -> int:
        """An upper bound on a prompt's tokens in ``context_window`` (after :meth:`validate`): prompts are cut to
        fit the window, and a benchmark that knows its lengths says less. A ``tokens=`` above it keeps every token."""
        return context_window

    def generation_kwargs(self, sample: Sample, tokenizer) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``: greedy decoding of ``sample.max_new_tokens`` tokens.

        Benchmarks whose official code stops at a newline add the newline token to ``eos_token_id``.
        """
        return {"max_new_tokens": sample.max_new_tokens, "do_sample": False, "num_beams": 1}

    def postprocess(self, sample: Sample, text: str) -> str:
        """The prediction as the official scorer sees it, from the decoded generation. Default: unchanged."""
        return text

    def details(self, sample: Sample, prediction: str) -> dict[str, Any]:
        """Secondary per-sample metrics for the record's ``extra`` (NIAH: ``contains``). Default: none."""
        return {}

    @property
    def benchmark_length(self) -> int | None:
        """The target length in tokens for generated benchmarks (``metrics.json``'s ``benchmark_length``)."""
        return None

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
