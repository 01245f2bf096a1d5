"""RULER as a :class:`~qpruning.benchmarks.base.Benchmark`: 13 tasks generated at any length for a tokenizer."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from qpruning.errors import check_dataclass_fields, check_real, check_seed

from .. import common
from ..base import (
    Benchmark,
    BenchmarkConfigError,
    DataNotFoundError,
    Sample,
    SampleError,
    benchmark_errors,
    encode_prompt,
    render_prompt,
    tokenize_prompt,
)
from ..common import stable_seed
from . import generators as gen
from . import qa as qa_data
from .cache import SampleCache
from .constants import ALL_TASKS, BASE_TASK_METRIC, BASE_TASKS, QA_TASKS, TASKS
from .metrics import METRICS, postprocess_pred

logger = logging.getLogger(__name__)

MIN_LENGTH = 256
FIT_TOLERANCE = 0.02
VT_ICL_TOKENS = 500  # variable_tracking.py: the in-context example is generated with max_seq_length=500
GENERATOR_VERSION = 2  # bump when a change to the generators or the cache format changes: invalidates cached samples


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=8)
def _fingerprint_of(serialized: str, chat_template: str) -> str:
    return hashlib.sha256((serialized + "\0" + chat_template).encode("utf-8")).hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary, merges, normalizers) and its chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        serialized = backend.to_str()
    else:  # a slow or custom tokenizer: its class, name and vocabulary
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        serialized = json.dumps(
            [type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), sorted(vocab.items())]
        )
    return _fingerprint_of(serialized, str(getattr(tokenizer, "chat_template", "") or ""))


@dataclass
class Ruler(Benchmark):
    """RULER (NVIDIA/RULER): synthetic retrieval, multi-hop tracing, aggregation and QA at a chosen length.

    Every sample is generated for the tokenizer at hand so that its prompt (chat template and answer prefix
    included) plus the task's generation length is at most ``length`` tokens and within 2% of it: RULER's
    accounting, where ``max_seq_length`` covers input and output. The prompt is the task template filled with
    the haystack, as one user turn, and the answer prefix appended after the generation prompt (RULER's
    ``prepare.py`` appends it after the model template). Scores: ``string_match_all`` (niah, vt, cwe, fwe) or
    ``string_match_part`` (qa) on the post-processed prediction, 0-100.

    Args:
        length: target length in tokens (4096, 8192, 16384, ...: the paper's RULER-4k/8k/16k).
        tasks: task names; ``None`` means all 13. qa_1/qa_2 need SQuAD/HotpotQA files (``qa_data_dir``) and are
            skipped with one logged message when they cannot be found. The paper's own code runs the 11 others
            (``qpruning.benchmarks.ruler.PAPER_TASKS``).
        num_samples: samples per task (RULER's default is 500).
        seed: the generation seed: the same seed gives byte-identical prompts.
        chat_template: wrap the prompt in the tokenizer's chat template (and fit the length with it).
        include_generation: count the task's generation length inside ``length`` (RULER); false fits the prompt
            alone to ``length``.
        max_new_tokens: override the official generation lengths (niah 128, vt 30, cwe 120, fwe 50, qa 32); the
            paper's code uses 64 for every task.
        qa_data_dir: folder with ``squad.json`` and ``hotpotqa.json`` (``scripts/download_ruler_qa.py``).
        hub_timeout: seconds to wait for the hub before declaring it unreachable (qa data only).
        cache_samples: keep generated samples in the qpruning cache (``data/ruler_samples``) and read them back
            when the same configuration and tokenizer come again: a sweep generates each sample once. The cache
            grows sample by sample: a run that uses the first 3 samples generates 3 (samples are made lazily,
            in order), and a later run that needs more generates only the ones not cached yet.
    """

    length: int = 4096
    tasks: list[str] | str | None = None
    num_samples: int = 500
    seed: int = 42
    chat_template: bool = True
    include_generation: bool = True
    max_new_tokens: int | None = None
    qa_data_dir: str | None = None
    hub_timeout: float = 3.0
    cache_samples: bool = True

    name: ClassVar[str] = "ruler"

    def __post_init__(self) -> None:
        # dataset -> (qas, docs), or None when its data is missing; an attribute, not a config field
        self._qa_cache: dict[str, Any] = {}
        with benchmark_errors():
            check_dataclass_fields("benchmark", self)
            check_seed("benchmark.seed", self.seed)
            check_real("benchmark.hub_timeout", self.hub_timeout, low=0.0, meaning="seconds")
        if self.tasks is None:
            self.tasks = list(ALL_TASKS)
        elif isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        self.tasks = list(self.tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise BenchmarkConfigError(
                f"benchmark.tasks: unknown RULER task(s) {', '.join(map(repr, unknown))}", f"valid: {', '.join(ALL_TASKS)}"
            )
        if not self.tasks:
            raise BenchmarkConfigError("benchmark.tasks is empty", f"valid: {', '.join(ALL_TASKS)}")
        if int(self.length) < MIN_LENGTH:
            raise BenchmarkConfigError(
                f"benchmark.length={self.length} is too short for RULER", f"allowed: at least {MIN_LENGTH} tokens"
            )
        self.length = int(self.length)
        if self.num_samples < 1:
            raise BenchmarkConfigError(f"benchmark.num_samples={self.num_samples} is not positive", "allowed: >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise BenchmarkConfigError(f"benchmark.max_new_tokens={self.max_new_tokens} is not positive", "allowed: >= 1 or null")

    @property
    def benchmark_length(self) -> int:
        return self.length

    def longest_prompt(self, context_window: int) -> int:
        return min(self.length, context_window)  # every sample is generated to fit ``length`` tokens

    @property
    def task_names(self) -> list[str]:
        """``tasks`` as :meth:`__post_init__` leaves it: a list of names."""
        assert isinstance(self.tasks, list)
        return self.tasks

    def tokens_to_generate(self, task: str) -> int:
        """The generation length of ``task``: RULER's per base task unless ``max_new_tokens`` overrides it."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return BASE_TASKS[TASKS[task]["task"]]["tokens_to_generate"]

    def validate(self, context_window: int) -> None:
        super().validate(context_window)
        worst = max(self.tokens_to_generate(t) for t in self.task_names)
        need = self.length if self.include_generation else self.length + worst
        if need > context_window:
            raise BenchmarkConfigError(
                f"RULER length {self.length} needs {need} tokens (prompt + up to {worst} generated), more than the "
                f"model's context window of {context_window} tokens",
                f"allowed: benchmark.length <= {context_window if self.include_generation else context_window - worst}",
            )

    # -- qa data -------------------------------------------------------------------------------------------------

    def _qa(self, task: str):
        dataset = TASKS[task]["args"]["dataset"]
        if dataset not in self._qa_cache:
            try:
                self._qa_cache[dataset] = qa_data.load(dataset, self.qa_data_dir, self.hub_timeout)
            except DataNotFoundError as exc:
                logger.warning("RULER %s skipped: %s", task, exc)
                self._qa_cache[dataset] = None
        return self._qa_cache[dataset]

    def available_tasks(self) -> list[str]:
        """The configured tasks minus qa tasks whose data cannot be found (logged once each)."""
        return [t for t in self.task_names if t not in QA_TASKS or self._qa(t) is not None]

    # -- generation ----------------------------------------------------------------------------------------------

    def _count(self, tokenizer, built: gen.Built) -> int:
        text = render_prompt(tokenizer, built.user_text, self.chat_template, built.answer_prefix)
        return len(tokenize_prompt(tokenizer, text, self.chat_template))

    def _builder(self, task: str, tokenizer) -> tuple[Callable[[int, int, int], gen.Built], int]:
        """``(build(size, seed, index) -> Built, lowest size)`` for ``task``."""
        base, args = TASKS[task]["task"], dict(TASKS[task]["args"])
        if base == "niah":
            lowest = max(args["num_needle_k"], args["num_needle_q"]) * args["num_needle_v"]
            return (lambda size, seed, index: gen.build_niah(size, seed, **args)), max(1, lowest)
        if base == "variable_tracking":
            icl_size: list[int] = []  # fitted once per task, on the first sample, as RULER makes one example

            # fitted with the first sample's seed whichever sample comes first (a cache may hold the others)
            icl_seed = stable_seed("ruler", self.seed, task, 0)

            def build_vt(size: int, seed: int, index: int) -> gen.Built:
                if not icl_size:
                    icl_size.append(
                        gen.fit_size(
                            lambda n: len(
                                tokenizer(
                                    gen.vt_icl_text(n, icl_seed, args["num_chains"], args["num_hops"]),
                                    add_special_tokens=False,
                                )["input_ids"]
                            ),
                            VT_ICL_TOKENS,
                            lowest=(min(10, args["num_hops"]) + 1) * args["num_chains"],
                        ).size
                    )
                return gen.build_vt(size, seed, args["num_chains"], args["num_hops"], icl_size=icl_size[0])

            return build_vt, (args["num_hops"] + 1) * args["num_chains"]
        if base == "common_words_extraction":
            return (
                lambda size, seed, index: gen.build_cwe(
                    size, seed, args["freq_cw"], args["freq_ucw"], args["num_cw"], self.length
                )
            ), args["num_cw"] + 1
        if base == "freq_words_extraction":
            vocab_size = max(8, self._prompt_target(task) // 50)
            return (lambda size, seed, index: gen.build_fwe(size, seed, args["alpha"], vocab_size)), 1
        if base == "qa":
            qas, docs = self._qa(task)
            return (lambda size, seed, index: gen.build_qa(size, seed, qas, docs, index)), max(
                len(qa["context"]) for qa in qas
            )
        raise BenchmarkConfigError(f"no generator for RULER base task {base!r}")

    def _prompt_target(self, task: str) -> int:
        return self.length - self.tokens_to_generate(task) if self.include_generation else self.length

    def task_samples(self, task: str, tokenizer) -> Iterator[Sample]:
        """The ``num_samples`` samples of one task, generated one by one as they are asked for."""
        for sample, _ in self._generate(task, tokenizer):
            yield sample

    def _generate(
        self, task: str, tokenizer, start: int = 0, previous: gen.Fit | None = None
    ) -> Iterator[tuple[Sample, gen.Fit | None]]:
        """``(sample, its fit)`` for the samples ``start..num_samples-1`` of ``task``. ``previous`` is the fit of the
        last generated sample before ``start`` (the search's starting point): with it, a continued generation
        makes exactly the samples a generation from 0 makes."""
        build, lowest = self._builder(task, tokenizer)
        target = self._prompt_target(task)
        new_tokens = self.tokens_to_generate(task)
        for index in tqdm(
            range(start, self.num_samples), desc=f"RULER {task} @{self.length}", disable=None, leave=False
        ):
            seed = stable_seed("ruler", self.seed, task, index)

            def count(n: int, seed: int = seed, index: int = index) -> int:
                return self._count(tokenizer, build(n, seed, index))

            try:
                fit = gen.fit_size(
                    count,
                    target,
                    lowest,
                    start=previous.size if previous else None,
                    slope=previous.slope if previous else None,
                )
                size, tokens = fit.size, fit.tokens
                built = build(size, seed, index)
                if not built.answers:
                    raise SampleError(f"RULER {task} sample {index} has no answer")
            except SampleError as exc:
                # Keep the sample, marked: encode() raises with the reason, so the runner records it as failed.
                logger.warning("RULER %s sample %d cannot be generated: %s", task, index, exc)
                yield self._failed_sample(task, index, new_tokens, str(exc)), None
                continue
            previous = fit
            total = tokens + (new_tokens if self.include_generation else 0)
            within = total >= (1 - FIT_TOLERANCE) * self.length
            if not within:
                logger.warning(
                    "RULER %s sample %d: %d tokens, more than %.0f%% below the target %d (one haystack unit is "
                    "too coarse)", task, index, total, 100 * FIT_TOLERANCE, self.length
                )  # fmt: skip
            yield Sample(
                id=self._sample_id(task, index),
                task=task,
                context=built.user_text,
                input="",
                answers=built.answers,
                max_new_tokens=new_tokens,
                length=self.length,
                extra={
                    "base_task": TASKS[task]["task"],
                    "answer_prefix": built.answer_prefix,
                    "target_length": self.length,
                    "prompt_tokens": tokens,
                    "haystack_size": size,
                    "fit_within_tolerance": within,
                    "seed": self.seed,
                    **built.info,
                },
            ), fit

    def _sample_id(self, task: str, index: int) -> str:
        return f"{task}-{self.length}-{index}"

    def _failed_sample(self, task: str, index: int, new_tokens: int, error: str) -> Sample:
        return Sample(
            id=self._sample_id(task, index),
            task=task,
            context="",
            input="",
            answers=[],
            max_new_tokens=new_tokens,
            length=self.length,
            extra={
                "base_task": TASKS[task]["task"],
                "target_length": self.length,
                "seed": self.seed,
                "error": error,
            },
        )

    def samples(self, tokenizer) -> Iterator[Sample]:
        """Task by task, ``num_samples`` each, deterministic for (seed, task, index, tokenizer, chat_template).

        Lazy: a sample is generated (or read from the cache) only when it is asked for, so taking the first few
        (``limit``) costs only those. With ``cache_samples``, each sample is read back from the qpruning cache
        when an identical configuration was generated before with the same tokenizer (see :meth:`cache_path`),
        and each newly generated sample is appended to it.
        """
        if tokenizer is None:
            raise BenchmarkConfigError("RULER needs the model's tokenizer to fit its samples to the length")
        for task in self.available_tasks():
            if self.cache_samples:
                yield from self._cached_task_samples(task, tokenizer)
            else:
                yield from self.task_samples(task, tokenizer)

    def _cached_task_samples(self, task: str, tokenizer) -> Iterator[Sample]:
        cache = SampleCache(self.cache_path(task, tokenizer))
        cached = cache.read(self.num_samples, lambda index: self._sample_id(task, index))
        if cached:
            logger.info("RULER %s @%d: %d samples from %s", task, self.length, len(cached), cache.path)
        previous = None
        for sample, fit in cached:
            previous = fit or previous
            yield sample
        for index, (sample, fit) in enumerate(self._generate(task, tokenizer, len(cached), previous), len(cached)):
            cache.append(index, sample, fit)
            yield sample

    def cache_path(self, task: str, tokenizer) -> Path:
        """``<qpruning cache>/data/ruler_samples/<key>.jsonl``: the key hashes everything that shapes the samples
        (generator version, task, length, seed, chat template, accounting, generation length, the
        tokenizer's vocabulary and chat template, the wonderwords version, the qa source file)."""
        parts: dict[str, Any] = {
            "version": GENERATOR_VERSION,
            "task": task,
            "length": self.length,
            "seed": self.seed,
            "chat_template": self.chat_template,
            "include_generation": self.include_generation,
            "tokens_to_generate": self.tokens_to_generate(task),
            "tokenizer": _tokenizer_fingerprint(tokenizer),
            "wonderwords": _package_version("wonderwords"),
        }
        if task in QA_TASKS:
            dataset = TASKS[task]["args"]["dataset"]
            source = qa_data.find(dataset, self.qa_data_dir)
            parts["qa_source"] = [str(source), source.stat().st_size] if source else None
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:24]
        return common.data_cache_dir("ruler_samples") / f"{task}-{self.length}-{key}.jsonl"

    # -- prompts and scores ----------------------------------------------------------------------------------------

    def encode(
        self, sample: Sample, tokenizer, max_input_tokens: int, chat_template: bool = True
    ) -> list[int]:
        """The chat prompt with the answer prefix; a sample that could not be generated raises :class:`SampleError`."""
        if sample.extra.get("error"):
            raise SampleError(sample.extra["error"])
        return encode_prompt(
            tokenizer,
            sample.context,
            max_input_tokens,
            chat_template and self.chat_template,
            assistant_prefix=sample.extra.get("answer_prefix", ""),
        )

    def postprocess(self, sample: Sample, text: str) -> str:
        return postprocess_pred(text)

    def score(self, sample: Sample, prediction: str) -> float:
        """``string_match_all`` or ``string_match_part`` of this one prediction (0-100)."""
        if not sample.answers:
            raise SampleError(f"sample {sample.id} has no reference answer")
        metric = METRICS[BASE_TASK_METRIC[TASKS[sample.task]["task"]]]
        return metric([prediction], [sample.answers])
