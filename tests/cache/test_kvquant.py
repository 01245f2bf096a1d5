"""KVQuant-style quantization (``quant=kvquant``): keys quantized before RoPE, per-vector outliers, positions held.

The references here use transformers' own RoPE (``apply_rotary_pos_emb`` with the model's rotary module) and the
plain group quantizer, on fresh random inputs; qpruning's ``KeyRotary`` is what is under test."""

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from qpruning import KIVI, KVCompressor, SnapKV
from qpruning.backends import reference_attention
from qpruning.cache import KVQuant, OutlierFilter
from qpruning.cache.layer import CompressedLayer
from qpruning.cache.quantized import GroupAxis, quantize
from qpruning.cache.rope import KeyRope, KeyRotary, PreRopeKeys, check_rope_config
from qpruning.errors import ConfigError
from qpruning.models import tiny_config
from tests.cache.test_ragged import (
    BATCH,
    DIM,
    KV_HEADS,
    Q_HEADS,
    SCALE,
    SEQ,
    STORAGE,
    decode,
    ragged_counts,
    random_keep,
)

ROPE_SCALINGS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    # attention_scaling != 1: YaRN scales cos and sin
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 512},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 512},
}


def rotary_module(kind: str = "default") -> LlamaRotaryEmbedding:
    config = LlamaConfig(hidden_size=DIM * Q_HEADS, num_attention_heads=Q_HEADS, num_key_value_heads=KV_HEADS,
                         head_dim=DIM, max_position_embeddings=4096, rope_parameters=ROPE_SCALINGS[kind])
    return LlamaRotaryEmbedding(config)


def rope(module, x: torch.Tensor, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """transformers' RoPE of ``x`` ``[n, d]`` at ``positions`` ``[n]`` (its inverse: the rotation by -theta, over
    the scaling squared)."""
    cos, sin = module(x, positions.view(1, -1).long())
    if inverse:
        scaling = module.attention_scaling
        return apply_rotary_pos_emb(x[None, None], x[None, None], cos, -sin)[1][0, 0] / scaling**2
    return apply_rotary_pos_emb(x[None, None], x[None, None], cos, sin)[1][0, 0]


@pytest.mark.parametrize("kind", list(ROPE_SCALINGS))
def test_key_rotary_applies_and_removes_transformers_rope(kind, rng):
    module = rotary_module(kind)
    rotary = KeyRotary.from_module(module)
    x = torch.randn(300, DIM, generator=rng)
    positions = torch.randint(0, 4000, (300,), generator=rng)
    post = rope(module, x, positions)
    torch.testing.assert_close(rotary.apply(x, positions), post, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rotary.remove(post, positions), x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rotary.remove(post, positions), rope(module, post, positions, inverse=True))


def test_per_vector_outliers_are_each_vectors_farthest_from_its_median(rng):
    x = torch.randn(128, DIM, generator=rng)
    fraction = 0.05
    per_token = OutlierFilter(fraction=fraction, per="vector").mask(x, GroupAxis.CHANNELS, 32)
    k = math.ceil(fraction * DIM)
    assert per_token.sum(1).tolist() == [k] * 128
    deviation = (x - x.median(1, keepdim=True).values).abs()
    assert bool((deviation[per_token].view(128, k).min(1).values >= deviation.masked_fill(per_token, -1).max(1).values).all())
    # per-channel groups: a vector is one channel's 32 tokens of a group, never two rows' tokens together
    per_channel = OutlierFilter(fraction=fraction, per="vector").mask(x, GroupAxis.TOKENS, 32)
    counts = per_channel.view(4, 32, DIM).sum(1)
    assert counts.eq(math.ceil(fraction * 32)).all()
    first_group = x[:32]
    alone = OutlierFilter(fraction=fraction, per="vector").mask(first_group, GroupAxis.TOKENS, 32)
    assert torch.equal(alone, per_channel[:32])


def test_per_vector_outliers_need_a_fraction():
    with pytest.raises(ConfigError, match="per=vector"):
        OutlierFilter(fraction=None, threshold=6.0, per="vector")
    with pytest.raises(ConfigError, match="quant.outliers.per"):
        OutlierFilter(per="row")


def pre_rope_keys_reference(module, x, positions, bits, group_size, outliers):
    """Post-RoPE keys ``x`` un-rotated by transformers' inverse RoPE, quantized by the plain group quantizer
    (per channel), dequantized and rotated again by transformers' RoPE."""
    pre = rope(module, x, positions, inverse=True)
    held = quantize(pre, bits, group_size, GroupAxis.TOKENS, STORAGE, outliers).dequantize(torch.float32)
    return rope(module, held, positions)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pre_rope_keys_dequantize_to_the_rotated_dequantized_pre_rope_keys(bits, rng):
    module = rotary_module("yarn")
    quantizer = KVQuant(bits=bits, group_size=32)
    x = torch.randn(192, DIM, generator=rng) * 3
    positions = torch.randperm(4000, generator=rng)[:192]
    held = quantizer.quantize_keys(x, STORAGE, KeyRope(KeyRotary.from_module(module), positions))
    assert isinstance(held, PreRopeKeys) and held.positions.dtype == torch.int32
    expected = pre_rope_keys_reference(module, x, positions, bits, 32, quantizer.outliers)
    torch.testing.assert_close(held.dequantize(torch.float32), expected, rtol=1e-4, atol=1e-4)
    out = torch.empty(2, 96, DIM)
    held.dequantize_into(out)
    assert torch.equal(out.view(-1, DIM), held.dequantize(torch.float32))
    assert held.nbytes()["index"] == 192 * 4  # one int32 position per key


def test_keys_with_a_pre_rope_outlier_channel_quantize_far_better_before_rope(rng):
    """A channel pair with a large constant pre-RoPE value (the key outlier channels KVQuant describes): after RoPE
    it turns with the position, so per-channel groups of post-RoPE keys see its whole swing; before RoPE it is
    constant along every group."""
    module = rotary_module()
    rotary = KeyRotary.from_module(module)
    n = 256
    pre = torch.randn(n, DIM, generator=rng) * 0.1
    pre[:, 0] += 8.0
    pre[:, DIM // 2] -= 6.0  # channel 0's rotation partner
    positions = torch.arange(n)
    post = rope(module, pre, positions)
    kivi = KIVI(bits=2, group_size=32).quantize_keys(post, STORAGE).dequantize(torch.float32)
    kvquant = KVQuant(bits=2, group_size=32, outliers=None).quantize_keys(
        post, STORAGE, KeyRope(rotary, positions)).dequantize(torch.float32)
    kivi_error = (kivi - post).pow(2).mean().sqrt()
    kvquant_error = (kvquant - post).pow(2).mean().sqrt()
    assert kvquant_error < kivi_error / 3


def kvquant_layer(rng, quantizer, offset):
    module = rotary_module()
    keys = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    values = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    keep = random_keep(rng, ragged_counts(rng, 60))
    layer = CompressedLayer()
    layer.update(keys, values)
    layer.compress(keep, quantizer, STORAGE, rotary=KeyRotary.from_module(module), position_offset=offset)
    return module, keys, values, keep, layer


def test_kvquant_layer_attention_equals_a_per_row_pre_rope_reference(rng):
    """Ragged rows, a left-padding offset per batch item, 40 decoded tokens flushed in blocks, a last step of 3:
    the layer's attention equals attention, row by row, over keys quantized before RoPE at their own positions."""
    quantizer = KVQuant(bits=4, group_size=32)
    offset = torch.tensor([0, 7])
    module, keys, values, keep, layer = kvquant_layer(rng, quantizer, offset)
    new_k, new_v, flushed, query = decode(rng, layer, quantizer)
    last = query.shape[2]
    ours = reference_attention(layer.segments(), query, SCALE)

    group = Q_HEADS // KV_HEADS
    expected = torch.zeros(BATCH, last, Q_HEADS, DIM)
    for b in range(BATCH):
        for h in range(KV_HEADS):
            kept = keep[b, h].nonzero().squeeze(-1)
            n = kept.numel()
            q = n - n % 32
            k_parts = [pre_rope_keys_reference(module, keys[b, h, kept[:q]], kept[:q] - offset[b], 4, 32,
                                               quantizer.outliers)] if q else []
            v_parts = [quantize(values[b, h, kept[:q]], 4, 32, GroupAxis.CHANNELS, STORAGE,
                                quantizer.outliers).dequantize(torch.float32)] if q else []
            k_parts.append(keys[b, h, kept[q:]].to(STORAGE).float())
            v_parts.append(values[b, h, kept[q:]].to(STORAGE).float())
            decoded_k = new_k[b, h].to(STORAGE)
            decoded_positions = torch.arange(SEQ, SEQ + flushed) - offset[b]
            k_parts.append(pre_rope_keys_reference(module, decoded_k[:flushed].float(), decoded_positions, 4, 32,
                                                   quantizer.outliers))
            v_parts.append(quantize(new_v[b, h, :flushed].to(STORAGE), 4, 32, GroupAxis.CHANNELS, STORAGE,
                                    quantizer.outliers).dequantize(torch.float32))
            k_parts.append(decoded_k[flushed:].float())
            v_parts.append(new_v[b, h, flushed:].to(STORAGE).float())
            k_row, v_row = torch.cat(k_parts), torch.cat(v_parts)
            for qh in range(h * group, (h + 1) * group):
                for i in range(last):
                    visible = k_row.shape[0] - last + i + 1
                    logits = (k_row[:visible] @ query[b, qh, i]) * SCALE
                    expected[b, i, qh] = torch.softmax(logits, -1) @ v_row[:visible]
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_kvquant_counts_one_int32_position_per_quantized_key(rng):
    quantizer = KVQuant(bits=4, group_size=32)
    _, _, _, keep, layer = kvquant_layer(rng, quantizer, None)
    quantized = sum(s.num_tokens for s in layer.prefix if s.quantized)
    lengths = sum(s.lengths.numel() * 4 for s in layer.prefix)
    assert quantized and layer.nbytes()["index"] == quantized * 4 + lengths + layer.kept_per_row.numel() * 4
    plain = CompressedLayer()
    plain.update(*(torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng) for _ in range(2)))
    plain.compress(keep, KIVI(bits=4, group_size=32, outliers=quantizer.outliers), STORAGE)
    assert layer.nbytes()["index"] - plain.nbytes()["index"] == quantized * 4


def test_a_kvquant_layer_without_the_models_rope_is_refused(rng):
    layer = CompressedLayer()
    layer.update(*(torch.randn(1, 1, 64, DIM, generator=rng) for _ in range(2)))
    with pytest.raises(ValueError, match="rotary"):
        layer.compress(torch.ones(1, 1, 64, dtype=torch.bool), KVQuant(bits=4, group_size=32), STORAGE)


def test_kvquant_with_a_rotation_or_a_rotated_layer_override_is_refused():
    with pytest.raises(ConfigError, match="quant.rotate"):
        KVQuant(rotate=True)
    with pytest.raises(ConfigError, match="quant.rotate"):
        KVQuant(bits=4).with_rotate(True)


@pytest.mark.parametrize(("change", "says"), [
    ({"partial_rotary_factor": 0.5}, "partial rotary"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}}, "rope_type=dynamic"),
    ({"model_type": "glm4"}, "interleaved"),
])
def test_rope_that_cannot_be_removed_is_refused_in_one_line_from_the_config(change, says):
    config = tiny_config("llama")
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(ConfigError, match=says) as error:
        check_rope_config(config)
    assert "\n" not in str(error.value)
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KVQuant(bits=4), tokens=64)
    with pytest.raises(ConfigError, match=says):
        compressor.plan(config)
    check_rope_config(tiny_config("llama"))  # plain RoPE passes


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral"])
def test_kvquant_generates_like_the_uncompressed_model_at_8_bits_with_left_padding(architecture, tiny_lm):
    """pruner=none, 8 bits: every prompt key quantized before RoPE (positions counted from each row's first real
    token) and decoded past two flushes; logits stay within 8-bit rounding of the uncompressed model's, and the
    greedy tokens are the same."""
    from qpruning import NoPruner
    from tests.test_compressor import generate, prompt

    model = tiny_lm(architecture)
    ids = prompt(150, seed=4, batch=2).to(model.device)
    mask = torch.ones_like(ids)
    mask[1, :22] = 0
    reference, _ = generate(model, ids, attention_mask=mask, new_tokens=70)
    compressor = KVCompressor(pruner=NoPruner(), quantizer=KVQuant(bits=8, group_size=32))
    out, cache = generate(model, ids, compressor, attention_mask=mask, new_tokens=70)
    assert torch.equal(out.sequences, reference.sequences)
    worst = max((a - b).abs().max().item() for a, b in zip(out.logits, reference.logits))
    assert worst < 0.05
    layer = cache.layers[0]
    assert isinstance(layer.prefix[0].keys, PreRopeKeys) and layer.decoded is not None
    assert isinstance(layer.decoded.keys, PreRopeKeys)
    assert layer.position_offset.tolist() == [0, 22]


# Every tiny family with RoPE in the rotate_half layout (cohere2's interleaved pairs are refused, above); hybrid
# models with their sliding-window layers quantized too (sliding=quantize), each with its own RoPE.
FAMILIES = ["mixtral", "qwen3", "phi3", "olmo2", "granite", "gemma2", "gemma3", "gpt_oss"]


@pytest.mark.parametrize("architecture", FAMILIES)
def test_kvquant_at_8_bits_generates_like_the_uncompressed_model_in_every_family(architecture, tiny_models):
    from qpruning import NoPruner
    from qpruning.models import TINY_FAMILIES
    from tests.test_compressor import generate, prompt

    model, _ = tiny_models(architecture, attn=TINY_FAMILIES[architecture].attn_implementation)
    ids = prompt(150, seed=5)
    reference, _ = generate(model, ids, new_tokens=70)
    sliding = "quantize" if "sliding_attention" in (getattr(model.config, "layer_types", None) or ()) else "keep"
    compressor = KVCompressor(pruner=NoPruner(), quantizer=KVQuant(bits=8, group_size=32), sliding=sliding)
    out, cache = generate(model, ids, compressor, new_tokens=70)
    assert torch.equal(out.sequences, reference.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(out.logits, reference.logits)) < 0.05
    assert all(isinstance(layer.prefix[0].keys, PreRopeKeys) for layer in cache.layers)


def test_gemma3s_sliding_layers_take_the_local_rope_and_its_global_layers_the_global_one(tiny_models):
    from qpruning.cache.rope import key_rotaries

    model, _ = tiny_models("gemma3")
    rotaries = key_rotaries(model)
    types = model.config.layer_types
    local = {tuple(r.inv_freq.tolist()) for r, t in zip(rotaries, types) if t == "sliding_attention"}
    full = {tuple(r.inv_freq.tolist()) for r, t in zip(rotaries, types) if t == "full_attention"}
    assert len(local) == 1 and len(full) == 1 and local != full
    head_dim = model.config.head_dim
    for kind, found in (("sliding_attention", local), ("full_attention", full)):
        theta = model.config.rope_parameters[kind]["rope_theta"]
        expected = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        torch.testing.assert_close(torch.tensor(next(iter(found))), expected)


@pytest.mark.parametrize("kept", [100, 128, 200])
@pytest.mark.parametrize("bits", [2, 4])
def test_exact_budgets_count_kvquants_outliers_and_positions_as_the_layer_holds_them(kept, bits, rng):
    """The byte formula that exact budgets spend (codes, scales, zeros, the 16-bit tail, per-vector outliers and one
    int32 position per quantized key) equals what a compressed KVQuant layer holds, row for row."""
    from qpruning.cache.budget import expected_outlier_bytes, row_bytes, tokens_for_budget

    quantizer = KVQuant(bits=bits, group_size=32)
    keys, values = (torch.randn(1, KV_HEADS, SEQ + 100, DIM, generator=rng) for _ in range(2))
    keep = torch.zeros(1, KV_HEADS, SEQ + 100, dtype=torch.bool)
    for h in range(KV_HEADS):
        keep[0, h, torch.randperm(SEQ + 100, generator=rng)[:kept]] = True
    layer = CompressedLayer()
    layer.update(keys, values)
    layer.compress(keep, quantizer, STORAGE, rotary=KeyRotary.from_module(rotary_module()))
    held = layer.nbytes()
    bookkeeping = 4 * KV_HEADS * (len(layer.prefix) + 1)  # each segment's row lengths, and the kept count per row
    expected = KV_HEADS * (row_bytes(kept, bits, quantizer, DIM) + expected_outlier_bytes(kept, bits, quantizer, DIM))
    assert sum(held.values()) - bookkeeping == expected
    # so that a budget buys KVQuant fewer tokens than KIVI: its outliers and positions are paid for
    assert tokens_for_budget(1 / 32, 8192, bits, quantizer, DIM, "exact") < tokens_for_budget(
        1 / 32, 8192, bits, KIVI(bits=bits, group_size=32), DIM, "exact")
