"""Continuation cross-entropy under a (compressed) cache: the paper's Figure 1.

A document is cut into a prefix of ``length`` tokens, which goes through the model and into the cache (where a
compressor prunes and quantizes it), and a continuation of ``continuation_tokens`` tokens, which is then
teacher-forced through that cache. The sample's score is the mean token cross-entropy of the continuation, in
nats (lower is better; not a 0-100 score). The paper uses GovReport; this benchmark reads LongBench's
``gov_report`` when its file is available and falls back to the Paul Graham essays offline (``source="auto"``).

The runner does, per sample::

    prefix, continuation = bench.split(sample, tokenizer)
    ce = continuation_cross_entropy(model, prefix, continuation, cache=compressed_cache)
    score = bench.score(sample, ce)
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from qpruning.errors import check_dataclass_fields, check_real
from qpruning.transformers_api import cache_kwargs, output_cache

from .base import Benchmark, BenchmarkConfigError, DataNotFoundError, Sample, SampleError, benchmark_errors
from .common import essay_files
from .longbench import data as lb_data

logger = logging.getLogger(__name__)

SOURCES = ("auto", "gov_report", "essays")


@dataclass
class CrossEntropy(Benchmark):
    """Mean cross-entropy of a document's continuation given a cache of its beginning.

    Args:
        source: ``gov_report`` (LongBench's GovReport reports; needs the LongBench file), ``essays`` (the Paul
            Graham essays, always available) or ``auto`` (gov_report when its file can be found, else essays).
        length: prefix tokens that go into the cache (the tokenizer's BOS included when it adds one).
        continuation_tokens: tokens whose cross-entropy is measured after the prefix.
        num_samples: documents to use (the first ones long enough, in file order; for essays, one sample starts
            at each essay, running on into the next ones).
        data_dir: folder with LongBench's ``gov_report.jsonl`` (as for ``longbench``).
        hub_timeout: seconds to wait for the hub when looking for gov_report.
    """

    source: str = "auto"
    length: int = 4096
    continuation_tokens: int = 256
    num_samples: int = 20
    data_dir: str | None = None
    hub_timeout: float = 3.0

    name: ClassVar[str] = "crossentropy"
    evaluation: ClassVar[Literal["generate", "cross_entropy"]] = "cross_entropy"

    def __post_init__(self) -> None:
        with benchmark_errors():
            check_dataclass_fields("benchmark", self)
            check_real("benchmark.hub_timeout", self.hub_timeout, low=0.0, meaning="seconds")
        if self.source not in SOURCES:
            raise BenchmarkConfigError(
                f"benchmark.source={self.source!r} is not a crossentropy source", f"valid: {', '.join(SOURCES)}"
            )
        if self.length < 1 or self.continuation_tokens < 1 or self.num_samples < 1:
            raise BenchmarkConfigError(
                f"benchmark.length={self.length}, continuation_tokens={self.continuation_tokens}, "
                f"num_samples={self.num_samples}: one is not positive", "allowed: each >= 1"
            )

    @property
    def benchmark_length(self) -> int:
        return self.length

    def validate(self, context_window: int) -> None:
        super().validate(context_window)
        need = self.length + self.continuation_tokens
        if need > context_window:
            raise BenchmarkConfigError(
                f"crossentropy needs {need} tokens (length {self.length} + continuation {self.continuation_tokens}), "
                f"more than the model's context window of {context_window} tokens",
                "allowed: a shorter benchmark.length or continuation_tokens",
            )

    def max_input_tokens(self, sample: Sample, context_window: int) -> int:
        return context_window - self.continuation_tokens

    def longest_prompt(self, context_window: int) -> int:
        return self.length  # the prefix that goes into the cache

    # -- documents -------------------------------------------------------------------------------------------------

    def _gov_report_documents(self) -> list[tuple[str, str]]:
        path = lb_data.resolve_files(["gov_report"], data_dir=self.data_dir, hub_timeout=self.hub_timeout)[
            "gov_report"
        ]
        return [(f"gov_report-{r['_id']}", r["context"]) for r in lb_data.read_jsonl(path)]

    def _essay_documents(self) -> list[tuple[str, str]]:
        texts = [(p.stem, p.read_text(encoding="utf-8")) for p in essay_files()]
        docs = []
        for i, (stem, _) in enumerate(texts):
            rotated = texts[i:] + texts[:i]
            docs.append((f"essays-{stem}", "".join(t for _, t in rotated)))
        return docs

    def documents(self) -> tuple[str, list[tuple[str, str]]]:
        """``(source, [(id, text), ...])`` for the configured source."""
        if self.source in ("gov_report", "auto"):
            try:
                return "gov_report", self._gov_report_documents()
            except DataNotFoundError as exc:
                if self.source == "gov_report":
                    raise
                logger.info("crossentropy: gov_report unavailable (%s); using the Paul Graham essays", exc)
        return "essays", self._essay_documents()

    def samples(self, tokenizer) -> Iterator[Sample]:
        """The first ``num_samples`` documents with at least ``length + continuation_tokens`` tokens."""
        if tokenizer is None:
            raise BenchmarkConfigError("crossentropy needs the model's tokenizer to cut documents in tokens")
        source, docs = self.documents()
        need = self.length + self.continuation_tokens
        made = 0
        for doc_id, text in docs:
            if made >= self.num_samples:
                break
            # Tokenize only what is needed (with room: a token is rarely more than 16 characters).
            text = text[: need * 16]
            ids = self._ids(tokenizer, text)
            if len(ids) < need:
                continue
            continuation = tokenizer.decode(ids[self.length : need], skip_special_tokens=True)
            yield Sample(
                id=f"ce-{doc_id}",
                task=source,
                context=text,
                input="",
                answers=[continuation],
                max_new_tokens=0,
                length=self.length,
                extra={
                    "source": source,
                    "prefix_tokens": self.length,
                    "continuation_tokens": self.continuation_tokens,
                },
            )
            made += 1
        if made < self.num_samples:
            logger.warning(
                "crossentropy: only %d %s documents have %d tokens (asked for %d samples)",
                made, source, need, self.num_samples,
            )  # fmt: skip

    @staticmethod
    def _ids(tokenizer, text: str) -> list[int]:
        try:
            return list(tokenizer(text, add_special_tokens=True)["input_ids"])
        except Exception as exc:
            raise SampleError(f"tokenizer failed on the document: {type(exc).__name__}: {exc}") from exc

    def split(self, sample: Sample, tokenizer) -> tuple[list[int], list[int]]:
        """``(prefix ids, continuation ids)`` of a sample: the document's tokens cut at ``prefix_tokens``."""
        ids = self._ids(tokenizer, sample.context)
        prefix_len = sample.extra["prefix_tokens"]
        need = prefix_len + sample.extra["continuation_tokens"]
        if len(ids) < need:
            raise SampleError(f"sample {sample.id} has {len(ids)} tokens, fewer than {need}")
        return ids[:prefix_len], ids[prefix_len:need]

    def encode(
        self, sample: Sample, tokenizer, max_input_tokens: int, chat_template: bool = True
    ) -> list[int]:
        """The prefix ids (no chat template: this is plain language modelling)."""
        prefix, _ = self.split(sample, tokenizer)
        if len(prefix) > max_input_tokens:
            raise SampleError(f"prefix of {len(prefix)} tokens exceeds max_input_tokens={max_input_tokens}")
        return prefix

    def score(self, sample: Sample, prediction: str | float) -> float:
        """The sample's cross-entropy (nats per token): the value :func:`continuation_cross_entropy` returned."""
        try:
            value = float(prediction)
        except (TypeError, ValueError) as exc:
            raise SampleError(f"crossentropy expects the measured cross-entropy, got {prediction!r}") from exc
        if value != value or value < 0:
            raise SampleError(f"invalid cross-entropy {value} for sample {sample.id}")
        return value

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``score``: mean cross-entropy in nats over the samples (lower is better); ``task_scores`` by source."""
        result = super().aggregate(records)
        ok = [
            float(r["score"]) for r in records if r.get("status", "ok") == "ok" and r.get("score") is not None
        ]
        result["score"] = sum(ok) / len(ok) if ok else float("nan")
        result["lower_is_better"] = True
        return result


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def continuation_cross_entropy(
    model,
    input_ids_prefix: Sequence[int],
    continuation_ids: Sequence[int],
    cache=None,
    chunk_size: int | None = 1,
) -> float:
    """Mean token cross-entropy (nats) of ``continuation_ids`` given ``input_ids_prefix``, through a cache.

    The prefix runs in one forward pass with the given cache (``None``: the model's default dynamic
    cache), so a compressing cache compresses it exactly as it would before generation. The logits of the last
    prefix position predict the first continuation token; the continuation is then fed through the same cache,
    ``chunk_size`` tokens per forward pass (1: token by token, as decoding does; ``None``: all at once), each
    predicting the next. Position ids continue at the original positions (prefix length + offset) whatever the
    cache holds, since a pruned cache holds fewer entries than the tokens it has seen; the attention mask is built
    by transformers from the cache's own length (``get_seq_length``), i.e. in cache-index space, which is causal
    for any cache that holds the same number of entries in every layer. For caches whose layers hold different
    numbers of entries (PyramidKV-style budgets), keep ``chunk_size=1``: single-token steps need no mask.

    Returns the mean over the continuation tokens, in nats.
    """
    import torch
    import torch.nn.functional as F

    if len(input_ids_prefix) < 1 or len(continuation_ids) < 1:
        raise SampleError("cross-entropy needs a non-empty prefix and continuation")
    device = next(model.parameters()).device
    prefix = torch.as_tensor(list(input_ids_prefix), dtype=torch.long, device=device).unsqueeze(0)
    target = torch.as_tensor(list(continuation_ids), dtype=torch.long, device=device)
    prefix_len, cont_len = prefix.shape[1], target.shape[0]
    step = cont_len if chunk_size is None else max(1, int(chunk_size))
    keep_last = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}

    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        out = model(
            input_ids=prefix,
            position_ids=torch.arange(prefix_len, device=device).unsqueeze(0),
            use_cache=True,
            **cache_kwargs(model, cache),
            **keep_last,
        )
        cache = output_cache(out)
        total += F.cross_entropy(out.logits[0, -1:].float(), target[:1], reduction="sum").double()
        inputs = target[:-1]
        for start in range(0, cont_len - 1, step):
            chunk = inputs[start : start + step].unsqueeze(0)
            positions = torch.arange(prefix_len + start, prefix_len + start + chunk.shape[1], device=device)
            out = model(
                input_ids=chunk, position_ids=positions.unsqueeze(0), use_cache=True, **cache_kwargs(model, cache)
            )
            cache = output_cache(out)
            labels = target[start + 1 : start + 1 + chunk.shape[1]]
            total += F.cross_entropy(out.logits[0].float(), labels, reduction="sum").double()
    return float(total / cont_len)
