"""Head-wise (ragged) caches: every (batch item, KV head) row holds its own number of tokens, and decoding over
them equals attending, head by head, over exactly that head's kept tokens."""

import json
import math

import pytest
import torch
from transformers import DynamicCache

from qpruning import KIVI, FlexGen, KVCompressor, SnapKV
from qpruning.backends import reference_attention
from qpruning.cache.context import reset_active_forward, set_active_forward
from qpruning.cache.layer import CompressedLayer
from qpruning.cache.segments import gather_rows
from qpruning.pruners import AdaKV, HeadKV
from qpruning.pruners import base as pruner_base
from qpruning.transformers_api import cache_kwargs

BATCH, KV_HEADS, Q_HEADS, SEQ, DIM = 2, 3, 6, 160, 64
SCALE = DIM**-0.5
STORAGE = torch.float16


def ragged_counts(rng, mean: int) -> list[list[int]]:
    """Different counts per row around ``mean`` (at least 1, at most SEQ), one row much longer than the others."""
    counts = []
    for b in range(BATCH):
        row = [max(1, min(SEQ, mean + int(torch.randint(-mean // 2, mean // 2 + 1, (1,), generator=rng)))) for _ in range(KV_HEADS)]
        row[b % KV_HEADS] = min(SEQ, 2 * mean + 7)
        counts.append(row)
    return counts


def random_keep(rng, counts) -> torch.Tensor:
    keep = torch.zeros(BATCH, KV_HEADS, SEQ, dtype=torch.bool)
    for b in range(BATCH):
        for h in range(KV_HEADS):
            keep[b, h, torch.randperm(SEQ, generator=rng)[: counts[b][h]]] = True
    return keep


def dequantized_row(x: torch.Tensor, quantizer, keys: bool, storage: torch.dtype = STORAGE) -> torch.Tensor:
    """One row's kept tokens as the storage rules say they are held, computed on that row alone: the first
    ``quantizable(n)`` tokens quantized (groups never cross rows), the rest in 16 bits."""
    if not quantizer.enabled:
        return x.to(storage).float()
    n = x.shape[0]
    q = quantizer.quantizable(n)
    fn = quantizer.quantize_keys if keys else quantizer.quantize_values
    parts = []
    if q:
        parts.append(fn(x[:q], storage).dequantize(torch.float32))
    if n - q:
        parts.append(x[q:].to(storage).float())
    return torch.cat(parts) if parts else x.new_zeros(0, x.shape[1])


def decoded_row(x: torch.Tensor, quantizer, keys: bool, flushed: int, storage: torch.dtype = STORAGE) -> torch.Tensor:
    """New tokens of one row: they wait in 16 bits, and the first ``flushed`` were quantized from there in blocks of
    ``residual_length``."""
    x = x.to(storage)
    if not quantizer.enabled:
        return x.float()
    block = quantizer.residual_length
    fn = quantizer.quantize_keys if keys else quantizer.quantize_values
    parts = [fn(x[i : i + block], storage).dequantize(torch.float32) for i in range(0, flushed, block)]
    parts.append(x[flushed:].float())
    return torch.cat(parts)


def per_head_reference(query, keys, values, keep, new_k, new_v, quantizer, flushed, storage=STORAGE):
    """Attention of ``query`` ``[B, Q_HEADS, q, D]`` (the last q new tokens), computed head by head over that head's
    kept tokens (dequantized on their own) and the new tokens, causal among the last q."""
    q_len = query.shape[2]
    group = Q_HEADS // KV_HEADS
    out = torch.zeros(BATCH, q_len, Q_HEADS, DIM)
    for b in range(BATCH):
        for h in range(KV_HEADS):
            kept = keep[b, h].nonzero().squeeze(-1)
            k_row = torch.cat([
                dequantized_row(keys[b, h, kept], quantizer, True, storage),
                decoded_row(new_k[b, h], quantizer, True, flushed, storage),
            ])
            v_row = torch.cat([
                dequantized_row(values[b, h, kept], quantizer, False, storage),
                decoded_row(new_v[b, h], quantizer, False, flushed, storage),
            ])
            total = k_row.shape[0]
            for qh in range(h * group, (h + 1) * group):
                for i in range(q_len):
                    visible = total - q_len + i + 1
                    logits = (k_row[:visible] @ query[b, qh, i].float()) * SCALE
                    out[b, i, qh] = torch.softmax(logits, -1) @ v_row[:visible]
    return out


def write_scores(path, layers: int, heads: int, seed: int = 0) -> None:
    """A head-scores file in the published format: ``{"layer-head": [per-probe scores]}`` on one line."""
    gen = torch.Generator().manual_seed(seed)
    data = {f"{layer}-{head}": torch.rand(3, generator=gen).tolist() for layer in range(layers) for head in range(heads)}
    path.write_text(json.dumps(data))


QUANTIZERS = [
    FlexGen(bits=16),
    FlexGen(bits=8, group_size=32),
    FlexGen(bits=4, group_size=64),
    KIVI(bits=4, group_size=32),
    KIVI(bits=8, group_size=32),
    KIVI(bits=2, group_size=32),
]


def compressed_layer(keys, values, keep, quantizer, storage=STORAGE) -> CompressedLayer:
    layer = CompressedLayer()
    layer.update(keys, values)
    layer.compress(keep, quantizer, storage)
    return layer


def decode(rng, layer, quantizer, dtype=torch.float32):
    """40 decoded tokens, one at a time (flushing full residual blocks after each step, as the attention wrapper
    does), then a last step of three tokens at once (a question appended after the context).

    Returns ``(new_k, new_v, flushed, query)``: ``query`` attends over the three last tokens.
    """
    steps, last = 40, 3
    new_k = torch.randn(BATCH, KV_HEADS, steps + last, DIM, generator=rng).to(dtype)
    new_v = torch.randn(BATCH, KV_HEADS, steps + last, DIM, generator=rng).to(dtype)
    token = set_active_forward(object())
    try:
        for t in range(steps):
            layer.update(new_k[:, :, t : t + 1], new_v[:, :, t : t + 1])
            layer.flush()
        layer.update(new_k[:, :, steps:], new_v[:, :, steps:])
    finally:
        reset_active_forward(token)
    flushed = (steps // quantizer.residual_length) * quantizer.residual_length if quantizer.enabled else 0
    query = torch.randn(BATCH, Q_HEADS, last, DIM, generator=rng).to(dtype)
    return new_k, new_v, flushed, query


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=lambda q: f"{q.name}{q.bits}g{q.group_size}")
@pytest.mark.parametrize("mean", [5, 37, 70])
def test_decoding_over_ragged_rows_equals_attending_per_head_over_its_kept_tokens(quantizer, mean, rng):
    keys = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    values = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    counts = ragged_counts(rng, mean)
    keep = random_keep(rng, counts)
    layer = compressed_layer(keys, values, keep, quantizer)
    assert layer.tokens_per_row().tolist() == [n for row in counts for n in row]
    assert layer.prefix and layer.prefix[0].uniform_length is None  # really ragged, nothing padded
    new_k, new_v, flushed, query = decode(rng, layer, quantizer)
    ours = reference_attention(layer.segments(), query, SCALE)
    expected = per_head_reference(query, keys, values, keep, new_k, new_v, quantizer, flushed)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


# What a float32 result rounded once to each dtype can be off by (torch.testing's defaults for the dtype).
DTYPE_TOLERANCE = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (1.6e-2, 1e-5), torch.float16: (1e-3, 1e-5)}


@pytest.mark.parametrize("quantizer", QUANTIZERS[:4], ids=lambda q: f"{q.name}{q.bits}g{q.group_size}")
@pytest.mark.parametrize("ragged", [False, True], ids=["uniform", "ragged"])
@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE), ids=lambda d: str(d).removeprefix("torch."))
def test_decoding_in_every_dtype_matches_a_float32_reference_within_the_dtypes_rounding(quantizer, ragged, dtype, rng):
    """Every layout (quantized prefix, 16-bit tails, decoded blocks, residual; uniform or ragged rows) of a layer
    that a ``dtype`` model fills, with the storage that model gets by default: attention comes back in ``dtype``,
    off a float32 computation over the same stored numbers by no more than one rounding to ``dtype``."""
    storage = KVCompressor().storage_dtype_for(dtype)
    keys = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng).to(dtype)
    values = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng).to(dtype)
    keep = random_keep(rng, ragged_counts(rng, 45) if ragged else [[70] * KV_HEADS] * BATCH)
    layer = compressed_layer(keys, values, keep, quantizer, storage)
    assert (layer.prefix[0].uniform_length is None) == ragged
    new_k, new_v, flushed, query = decode(rng, layer, quantizer, dtype)
    assert layer.residual_keys.dtype == storage
    ours = reference_attention(layer.segments(), query, SCALE)
    assert ours.dtype == dtype
    expected = per_head_reference(query, keys, values, keep, new_k, new_v, quantizer, flushed, storage)
    rtol, atol = DTYPE_TOLERANCE[dtype]
    torch.testing.assert_close(ours.float(), expected, rtol=rtol, atol=atol)


def test_rows_hold_exactly_their_kept_tokens_in_order_without_padding(rng):
    keys = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    values = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    keep = random_keep(rng, ragged_counts(rng, 30))
    layer = CompressedLayer()
    layer.update(keys, values)
    layer.compress(keep, FlexGen(bits=16), torch.float32)
    segment = layer.prefix[0]
    assert segment.num_tokens == int(keep.sum())  # no padding held
    k, v, valid, lengths = gather_rows(layer.segments(), torch.float32, BATCH * KV_HEADS, DIM, keys.device)
    for r in range(BATCH * KV_HEADS):
        b, h = divmod(r, KV_HEADS)
        n = int(lengths[r])
        assert torch.equal(k[r, :n], keys[b, h, keep[b, h]]) and torch.equal(v[r, :n], values[b, h, keep[b, h]])
        assert valid is None or not valid[r, n:].any()


@pytest.mark.parametrize("pruner_factory", [lambda p: AdaKV(), lambda p: HeadKV(head_scores=str(p))], ids=["adakv", "headkv"])
def test_model_cache_holds_each_heads_selected_tokens(pruner_factory, tiny_models, tmp_path, monkeypatch):
    """Through a tiny model: what each layer stores, row by row, is the prefill keys at that head's selected positions."""
    model, _ = tiny_models("llama")
    config = model.config
    write_scores(tmp_path / "s.json", config.num_hidden_layers, config.num_attention_heads, seed=3)
    pruner = pruner_factory(tmp_path / "s.json")
    masks = {}
    original = pruner_base.select_tokens

    def recording(scores, counts, key_valid, window):
        keep = original(scores, counts, key_valid, window)
        masks[len(masks)] = keep.clone()
        return keep

    monkeypatch.setattr("qpruning.pruners.base.select_tokens", recording)
    ids = torch.randint(100, 40000, (1, 300), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        plain = DynamicCache()
        model(ids, **cache_kwargs(model, plain))
        compressor = KVCompressor(pruner=pruner, quantizer=FlexGen(bits=16), tokens=48, storage_dtype="model")
        with compressor.attach(model):
            cache = compressor.new_cache(model)
            model(ids, **cache_kwargs(model, cache))
    heads = config.num_key_value_heads
    lengths_seen = set()
    for index, layer in enumerate(cache.layers):
        keep = masks[index]
        k, _, _, lengths = gather_rows(layer.segments(), torch.float32, heads, layer.shape[2], ids.device)
        lengths_seen.add(tuple(lengths.tolist()))
        for h in range(heads):
            expected = plain.layers[index].keys[0, h, keep[0, h]]
            assert torch.equal(k[h, : int(lengths[h])], expected)
    assert any(len(set(t)) > 1 for t in lengths_seen), "the heads should keep different numbers of tokens"
    assert math.isclose(cache.kept_tokens(), 48.0)


def test_same_budget_under_snapkv_holds_the_same_number_of_rows(tiny_models):
    model, _ = tiny_models("llama")
    ids = torch.randint(100, 40000, (1, 300), generator=torch.Generator().manual_seed(1))
    layers = {}
    for pruner in (SnapKV(window=8), AdaKV()):
        compressor = KVCompressor(pruner=pruner, quantizer=FlexGen(bits=4), tokens=40)
        with compressor.attach(model), torch.no_grad():
            cache = compressor.new_cache(model)
            model(ids, **cache_kwargs(model, cache))
        layers[pruner.name] = cache.layers
    for snap, ada in zip(layers["snapkv"], layers["adakv"]):
        assert snap.prefix[0].uniform_length == 40
        assert int(ada.tokens_per_row().sum()) == int(snap.tokens_per_row().sum())
