"""Prefill once, compress and decode many times: one prompt's prefill serves every compressor.

Every compressor here compresses a layer once, at the end of prefill, from that layer's full-precision queries,
keys and values (:meth:`qpruning.compressor.KVCompressor.compress_layer`), and what a layer's compression keeps
does not change what the next layer sees during prefill. So the prefill of one prompt can be run once, its
per-layer tensors kept (:meth:`SharedPrefill.record`), and each compressor's cache built from them later
(:meth:`SharedPrefill.fill`), exactly as if that compressor had compressed in line.

Decoding goes through ``model.generate`` unchanged, with the same arguments as a one-by-one run
(:meth:`SharedPrefill.replayed`): within the block, the model's first forward call (the prefill ``generate``
makes) does not run the model; it fills the cache from the recording and returns the recorded prefill output (the
last position's logits). Every later call (the decode steps) runs the model as usual. ``generate``'s stopping
rules, logits processors and token choice are its own, so the tokens are those of a one-by-one run: the recorded
prefill is the same forward call with the same inputs, and each cache is compressed by the same code from the
same tensors.

Memory: one prompt's recording holds, per layer, the keys and values (what the prefill's cache holds anyway) and
the last queries that the group's pruners read (:func:`queries_needed`: the observation window for SnapKV,
PyramidKV, Ada-KV and HeadKV, none for StreamingLLM or quantization alone, every query only when H2O is in the
group), on the model's device. For Llama-3-8B at 32k tokens, all queries are 32 layers x 32 heads x 32k x 128 x 2
bytes = 8.6 GB; a window of 32 is 8.4 MB. When a layer is compressed (:meth:`SharedPrefill.fill`), its query is
rebuilt at full length with zeros in front of the kept tail, one layer at a time: a pruner never reads them.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from qpruning.attention import ForwardContext, LayerCapture
from qpruning.cache.cache import QPrunedCache
from qpruning.cache.layer import LayerPrefill
from qpruning.compressor import KVCompressor
from qpruning.transformers_api import cache_argument, cache_kwargs, forward_cache


def queries_needed(compressors) -> int | None:
    """How many of the prompt's last queries a prefill shared by ``compressors`` must keep: the most that any of
    their pruners reads (:attr:`~qpruning.pruners.base.Pruner.queries_read`); ``None`` when one reads them all."""
    reads = [compressor.pruner.queries_read for compressor in compressors]
    return None if any(n is None for n in reads) else max(reads, default=0)


@dataclass
class _Recording:
    """The forward context of a recorded prefill: each layer's compression is recorded, not done (the layer stays
    as the model made it)."""

    cache: QPrunedCache
    layers: list[LayerCapture | None]
    queries: int | None = None

    def compress_layer(self, layer_idx: int, query, key, value, scaling: float) -> LayerPrefill:
        self.layers[layer_idx] = LayerCapture.keep(query, key, value, scaling, self.queries)
        return self.cache.layers[layer_idx].finish_prefill()


@contextlib.contextmanager
def _first_forward(model, handler: Callable[..., Any]) -> Iterator[None]:
    """Within the block, ``model``'s next forward call is ``handler(original_forward, *args, **kwargs)``; later
    calls are the model's own. Only this model object is touched, and only for the block."""
    original = model.forward
    own = "forward" in vars(model)
    pending = [True]

    @functools.wraps(original)  # generate reads the forward's signature (logits_to_keep...): keep the model's
    def forward(*args, **kwargs):
        if pending:
            pending.clear()
            return handler(original, *args, **kwargs)
        return original(*args, **kwargs)

    model.forward = forward
    try:
        yield
    finally:
        if own:
            model.forward = original
        else:
            del model.forward


@dataclass
class SharedPrefill:
    """One prompt's prefill, recorded to build any compressor's cache from it.

    Args:
        input_ids: the prompt ``[1, seq]``.
        attention_mask: the prefill's 2-D mask.
        layers: per layer, what its compression is given.
        output: the prefill forward's output (its logits), its cache left out.
        cache_field: the output's field that holds the cache.
        seconds: the wall time of the recorded prefill.
        sharers: how many runs use it (:attr:`share_seconds`: each one's share of ``seconds``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    layers: list[LayerCapture]
    output: Any = field(repr=False)
    cache_field: str = "cache"
    seconds: float = 0.0
    sharers: int = 1

    @property
    def share_seconds(self) -> float:
        return self.seconds / max(self.sharers, 1)

    @classmethod
    def record(
        cls, model, compressor: KVCompressor, input_ids: torch.Tensor, generation_kwargs: dict[str, Any],
        queries: int | None = None,
    ) -> SharedPrefill:
        """Run the prefill of ``input_ids`` once, as ``model.generate(input_ids, **generation_kwargs)`` runs it
        (the same call: ``generate`` makes the forward's arguments), keeping what compression needs: each
        layer's keys, values and last ``queries`` queries (``None``: all; :func:`queries_needed`).

        ``compressor`` only installs the attention wrapper (its cache is not compressed)."""
        started = time.time()
        layers: list[LayerCapture | None] = [None] * model.config.num_hidden_layers
        cache = QPrunedCache(model.config.num_hidden_layers)
        kept: dict[str, Any] = {}

        def keep_output(original, *args, **kwargs):
            kept["output"] = original(*args, **kwargs)
            return kept["output"]

        mask = torch.ones_like(input_ids)
        kwargs = {**generation_kwargs, "max_new_tokens": 1}
        kwargs.pop("min_new_tokens", None)
        with compressor.attach(model, context=lambda c: _Recording(c, layers, queries)), _first_forward(model, keep_output):
            model.generate(input_ids, attention_mask=mask, **cache_kwargs(model, cache), **kwargs)
        missing = [i for i, layer in enumerate(layers) if layer is None]
        captured = [layer for layer in layers if layer is not None]
        if missing or "output" not in kept:
            raise RuntimeError(f"the recorded prefill did not reach layers {missing}: nothing to share")
        output = kept["output"]
        fields = dict(output.items())
        name = next((k for k, v in fields.items() if v is cache), None)
        if name is None:
            raise RuntimeError("the prefill's output does not hold its cache: cannot hand another cache on")
        fields.pop(name)
        return cls(input_ids, mask, captured, type(output)(**fields), name, time.time() - started)

    def fill(self, compressor: KVCompressor, cache: QPrunedCache) -> None:
        """Compress every layer of the empty ``cache`` with ``compressor`` from the recording: the cache ends as
        the in-line prefill would have left it."""
        if any(layer.seen_tokens for layer in cache.layers) or len(cache.layers) != len(self.layers):
            raise ValueError("SharedPrefill.fill needs an empty cache with one layer per recorded layer")
        cache.record_attention_mask(self.attention_mask)
        context = ForwardContext(compressor, cache)
        for index, capture in enumerate(self.layers):
            key, value = cache.layers[index].update(capture.key, capture.value)
            context.compress_layer(index, capture.query(), key, value, capture.scaling)

    @contextlib.contextmanager
    def replayed(self, model, compressor: KVCompressor, cache: QPrunedCache) -> Iterator[None]:
        """Within the block, ``model.generate(self.input_ids, cache=cache, ...)`` takes its prefill from the
        recording (``cache`` filled by :meth:`fill`) and decodes as usual. Run it inside ``compressor.attach``."""
        with self.replayed_rows(model, cache, lambda: self.fill(compressor, cache), rows=1):
            yield

    @contextlib.contextmanager
    def replayed_rows(self, model, cache, fill: Callable[[], None], rows: int) -> Iterator[None]:
        """Within the block, ``model.generate`` of ``rows`` copies of the prompt with ``cache`` takes its prefill
        from the recording: ``fill()`` readies ``cache`` (``rows`` rows), every row gets the recorded logits."""
        name = cache_argument(model)

        def from_recording(original, *args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            expected = self.input_ids.expand(rows, -1)
            if ids is None or not torch.equal(ids, expected) or forward_cache(kwargs, name) is not cache:
                raise RuntimeError("a replayed prefill must be the recorded prompt with the cache given to replayed()")
            fill()
            fields = {k: (v.expand(rows, *v.shape[1:]) if k == "logits" else v) for k, v in self.output.items()}
            return type(self.output)(**{**fields, self.cache_field: cache})

        with _first_forward(model, from_recording):
            yield
