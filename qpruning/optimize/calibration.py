"""The calibration objective: how far a compressed cache moves the model's answers from the uncompressed ones.

Searching over allocations means evaluating many compressed caches of the same prompts. Compression happens at
the end of prefill and does not change the prefill itself (each layer's output is computed before its cache is
pruned), so the prefill runs once per prompt: :func:`record_prefill` keeps every layer's post-RoPE queries, keys
and values, and :func:`build_cache` makes the compressed cache of any allocation from them, layer by layer,
exactly as a live prefill would.

The objective of an allocation is the mean cross-entropy, over the calibration prompts, of the uncompressed
model's greedy answer teacher-forced through the compressed cache (lower is better; 0 would mean the compressed
model is certain of the uncompressed answer). Its first token is predicted by the prefill's last position, which
compression does not touch, so it is left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qpruning.attention import ForwardContext
from qpruning.cache.cache import QPrunedCache
from qpruning.compressor import KVCompressor
from qpruning.transformers_api import cache_kwargs

logger = logging.getLogger(__name__)


@dataclass
class RecordedPrompt:
    """One calibration prompt: its ids, every layer's (query, key, value, scaling), and the reference answer."""

    sample_id: str
    input_ids: torch.Tensor  # [1, seq]
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]
    answer_ids: torch.Tensor  # [n]

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]


class _PrefillRecorder(KVCompressor):
    """A compressor that compresses nothing and keeps what each layer's prefill saw."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.recorded: list = []

    def compress_layer(self, cache, layer_idx, query, key, value, scaling, layer_tokens=None):
        self.recorded.append((query, key, value, scaling))
        return cache.layers[layer_idx].finish_prefill()


def record_prefill(model, input_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]:
    """Every layer's post-RoPE queries, keys, values and attention scaling for one prompt."""
    recorder = _PrefillRecorder()
    with recorder.attach(model), torch.inference_mode():
        model(input_ids, **cache_kwargs(model, recorder.new_cache(model)), logits_to_keep=1)
    return recorder.recorded


def reference_answer(model, input_ids: torch.Tensor, generation_kwargs: dict) -> torch.Tensor:
    """The uncompressed model's greedy answer (token ids, without the prompt)."""
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **generation_kwargs)
    return out[0, input_ids.shape[1] :]


def build_cache(model, compressor: KVCompressor, prompt: RecordedPrompt) -> QPrunedCache:
    """The compressed cache ``compressor`` makes of ``prompt``'s prefill, without running the prefill again."""
    cache = compressor.new_cache(model)
    context = ForwardContext(compressor, cache)  # as the forward does: CAKE compresses after the last layer
    with torch.inference_mode():
        for layer_idx, (query, key, value, scaling) in enumerate(prompt.layers):
            cache.layers[layer_idx].update(key, value)
            context.compress_layer(layer_idx, query, key, value, scaling)
    return cache


def answer_cross_entropy(model, compressor: KVCompressor, prompt: RecordedPrompt) -> tuple[float, dict]:
    """Mean cross-entropy (nats) of the reference answer through ``compressor``'s cache, and that cache's summary."""
    cache = build_cache(model, compressor, prompt)
    summary = cache.prefill_summary
    assert summary is not None  # build_cache compressed every layer: its prefill has ended
    answer = prompt.answer_ids
    if answer.numel() < 2:
        return 0.0, summary
    inputs = answer[:-1].unsqueeze(0)
    positions = torch.arange(prompt.length, prompt.length + inputs.shape[1]).unsqueeze(0)
    with compressor.attach(model), torch.inference_mode():
        logits = model(inputs, **cache_kwargs(model, cache), position_ids=positions).logits[0]
    return F.cross_entropy(logits.float(), answer[1:]).item(), summary
