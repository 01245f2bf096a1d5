"""Quantized pruning on real (tiny, random) transformers models: exactness, positions, padding, errors."""

import copy
import dataclasses
import itertools
import subprocess
import sys

import pytest
import torch

from qpruning import (
    HQQ,
    KIVI,
    FlexGen,
    FlexGenOutlier,
    KIVIOutlier,
    KVCompressor,
    KVQuant,
    LayerOverride,
    NoPruner,
    SnapKV,
    StreamingLLM,
)
from qpruning.models import tiny_config
from qpruning.transformers_api import cache_kwargs, output_cache
from tests.default_pruners import MODEL_FREE_PRUNERS

PRUNERS = MODEL_FREE_PRUNERS  # every registered pruner that runs on any model (qpruning.pruners.PRUNERS)
QUANTIZERS = [KIVI, FlexGen, KIVIOutlier, FlexGenOutlier, HQQ, KVQuant]
ARCHITECTURES = ["llama", "mistral", "qwen2"]
DTYPES = ["float32", "bfloat16", "float16"]
ATTENTION = ["sdpa", "eager"]  # eager: every modeling file's own fallback


def prompt(length, seed=0, batch=1):
    return torch.randint(100, 40000, (batch, length), generator=torch.Generator().manual_seed(seed))


def generate(model, ids, compressor=None, new_tokens=6, **kwargs):
    options = dict(max_new_tokens=new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
    options.update(kwargs)
    if compressor is None:
        return model.generate(ids, **options), None
    with compressor.attach(model):
        cache = compressor.new_cache(model)
        out = model.generate(ids, **cache_kwargs(model, cache), **options)
    return out, cache


@pytest.mark.device
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("pruner_cls", PRUNERS)
def test_bits16_with_budget_at_or_above_length_reproduces_uncompressed_logits(architecture, pruner_cls, tiny_lm):
    # On the CPU in float32 by default; the GPU check runs it on CUDA in bfloat16 (QPRUNING_TEST_DEVICE/DTYPE).
    model = tiny_lm(architecture)
    ids = prompt(90, seed=3).to(model.device)
    reference, _ = generate(model, ids)
    for quantizer_cls in QUANTIZERS:
        for tokens in (90, 500):
            kwargs = {} if pruner_cls is NoPruner else {"tokens": tokens}
            compressor = KVCompressor(pruner=pruner_cls(), quantizer=quantizer_cls(bits=16), **kwargs)
            out, cache = generate(model, ids, compressor)
            assert torch.equal(out.sequences, reference.sequences)
            for ours, theirs in zip(out.logits, reference.logits):
                assert torch.equal(ours, theirs), f"{compressor.describe()} changed the logits"
            assert not any(layer.compressed for layer in cache.layers)


@pytest.mark.parametrize("attn", ATTENTION)
def test_hand_written_decode_loop_equals_generate(attn, tiny_models):
    model, _ = tiny_models("llama", attn=attn)
    ids = prompt(300, seed=5)
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4, group_size=32), tokens=96)
    out, _ = generate(model, ids, compressor, new_tokens=40)
    logits = []
    with compressor.attach(model), torch.no_grad():
        cache = compressor.new_cache(model)
        # logits_to_keep=1, as generate does: the same matmul shapes give the same bits.
        step = model(ids, **cache_kwargs(model, cache), logits_to_keep=1)
        for i in range(40):
            logits.append(step.logits[:, -1])
            token = step.logits[:, -1].argmax(-1, keepdim=True)
            position = torch.tensor([[ids.shape[1] + i]])
            step = model(token, **cache_kwargs(model, cache), position_ids=position, logits_to_keep=1)
    for ours, theirs in zip(logits, out.logits):
        assert torch.equal(ours, theirs)
    # 40 decoded tokens went through the residual window: one block of 32 quantized, 8 waiting.
    layer = cache.layers[0]
    assert layer.decoded is not None and layer.decoded.uniform_length == 32
    assert layer.residual_keys.shape[2] == 8


def masked_reference_logits(model, ids, keep_positions, steps):
    """Uncompressed model, decoding with a 4-D mask that hides the positions a pruner dropped."""
    with torch.no_grad():
        out = model(ids)
        cache, logits = output_cache(out), [out.logits[:, -1]]
        allowed = torch.zeros(ids.shape[1], dtype=torch.bool)
        allowed[keep_positions] = True
        for i in range(steps):
            token = logits[-1].argmax(-1, keepdim=True)
            allowed = torch.cat([allowed, torch.ones(1, dtype=torch.bool)])
            mask = allowed.view(1, 1, 1, -1)
            if model.config._attn_implementation == "eager":  # eager adds its mask to the logits
                mask = torch.zeros(mask.shape, dtype=model.dtype).masked_fill(~mask, torch.finfo(model.dtype).min)
            position = torch.tensor([[ids.shape[1] + i]])
            out = model(token, **cache_kwargs(model, cache), attention_mask=mask, position_ids=position)
            logits.append(out.logits[:, -1])
    return logits


@pytest.mark.parametrize("attn", ATTENTION)
def test_decoding_after_pruning_continues_at_the_original_positions(attn, tiny_models):
    model, _ = tiny_models("llama", attn=attn)
    ids = prompt(200, seed=7)
    # StreamingLLM keeps the same positions in every layer and head: first 40, last 32.
    compressor = KVCompressor(pruner=StreamingLLM(window=32), quantizer=KIVI(bits=16), tokens=72, storage_dtype="model")
    out, _ = generate(model, ids, compressor, new_tokens=5)
    keep = list(range(40)) + list(range(168, 200))
    expected = masked_reference_logits(model, ids, keep, steps=4)
    for ours, theirs in zip(out.logits, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # The comparison can fail: decoding at the compacted positions (72, 73, ...) gives other logits.
    with compressor.attach(model), torch.no_grad():
        cache = compressor.new_cache(model)
        first = model(ids, **cache_kwargs(model, cache)).logits[:, -1]
        token = first.argmax(-1, keepdim=True)
        wrong = model(token, **cache_kwargs(model, cache), position_ids=torch.tensor([[72]])).logits[:, -1]
    assert not torch.allclose(wrong, expected[1], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("quantizer", [KIVI(bits=4, group_size=32), FlexGen(bits=8, group_size=64)])
def test_left_padded_batch_matches_each_prompt_alone_and_keeps_no_padding(quantizer, tiny_models):
    model, tokenizer = tiny_models("llama")
    long_ids, short_ids = prompt(260, seed=11)[0], prompt(150, seed=12)[0]
    pad = tokenizer.pad_token_id
    batch = torch.stack([long_ids, torch.cat([torch.full((110,), pad), short_ids])])
    mask = torch.stack([torch.ones(260, dtype=torch.long), torch.cat([torch.zeros(110), torch.ones(150)]).long()])
    compressor = KVCompressor(pruner=SnapKV(), quantizer=quantizer, tokens=200)
    out, cache = generate(model, batch, compressor, new_tokens=8, attention_mask=mask, pad_token_id=pad)
    for row, single in enumerate((long_ids, short_ids)):
        alone, _ = generate(model, single.unsqueeze(0), compressor, new_tokens=8)
        assert torch.equal(out.sequences[row, -8:], alone.sequences[0, -8:])
        for ours, theirs in zip(out.logits, alone.logits):
            torch.testing.assert_close(ours[row], theirs[0], rtol=2e-3, atol=2e-3)
    heads = model.config.num_key_value_heads
    for layer in cache.layers:
        kept = layer.kept_per_row.view(2, heads)
        assert (kept[0] == 200).all()  # long prompt: pruned to the budget
        assert (kept[1] == 150).all()  # short prompt: every real token, no padding


def test_qwen3_is_supported(tiny_models):
    from qpruning.models import tiny_model

    model, _ = tiny_model("qwen3")
    ids = prompt(120)
    reference, _ = generate(model, ids)
    out, _ = generate(model, ids, KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=16), tokens=120))
    assert torch.equal(out.sequences, reference.sequences)
    out, cache = generate(model, ids, KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=64))
    assert cache.layers[0].compressed


def test_attach_leaves_the_model_as_it_found_it(tiny_models):
    model, _ = tiny_models("llama")
    before = model.config._attn_implementation
    hooks = len(model.model._forward_pre_hooks), len(model.model._forward_hooks)
    with KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=64).attach(model):
        assert model.config._attn_implementation == "qpruning_" + before
    assert model.config._attn_implementation == before
    assert (len(model.model._forward_pre_hooks), len(model.model._forward_hooks)) == hooks


def test_a_compressed_cache_refuses_to_be_read_outside_attach(tiny_models):
    model, _ = tiny_models("llama")
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=64)
    ids = prompt(150)
    with compressor.attach(model), torch.no_grad():
        cache = compressor.new_cache(model)
        model(ids, **cache_kwargs(model, cache))
    with pytest.raises(RuntimeError, match="attach"), torch.no_grad():
        model(ids[:, :1], **cache_kwargs(model, cache))


def test_attach_compresses_the_cache_that_generate_creates(tiny_models):
    model, _ = tiny_models("llama")
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=64)
    with compressor.attach(model) as attached:
        out = model.generate(prompt(150), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == 153
    assert attached.last_cache.layers[0].compressed
    assert attached.last_cache.kept_tokens() == 64 + 2


def test_importing_qpruning_registers_and_patches_nothing():
    code = (
        "import qpruning, transformers\n"
        "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS\n"
        "from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS\n"
        "assert not [k for k in ALL_ATTENTION_FUNCTIONS._global_mapping if 'qpruning' in k]\n"
        "assert not [k for k in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping if 'qpruning' in k]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_layer_wise_overrides_give_layers_their_own_bits_and_tokens():
    config = tiny_config("llama", num_hidden_layers=8)
    compressor = KVCompressor(
        pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1 / 64, layers=[LayerOverride("2-5", bits=16)]
    )
    plans = compressor.plan(config)
    assert [p.bits for p in plans] == [4, 4, 16, 16, 16, 16, 4, 4]
    assert [p.tokens for p in plans] == [512, 512, 128, 128, 128, 128, 512, 512]


def test_layer_wise_plan_runs_end_to_end(tiny_models):
    model, _ = tiny_models("llama")
    compressor = KVCompressor(
        pruner=SnapKV(), quantizer=KIVI(bits=4, group_size=32), tokens=128,
        layers=[LayerOverride("1-2", bits=16, tokens=32)],
    )
    _, cache = generate(model, prompt(400), compressor, new_tokens=1)
    kept = [layer.kept_per_row.float().mean().item() for layer in cache.layers]
    assert kept == [128, 32, 32, 128]
    assert cache.layers[1].prefix[0].quantized is False


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4)), "exactly one of tokens"),
        (lambda: KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=10, budget=0.1), "exactly one of tokens"),
        (lambda: KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1.5), r"fraction in \(0, 1\]"),
        (lambda: KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=64, budget_mode="approx"), "nominal or exact"),
        (lambda: KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=5), tokens=64), "allowed: 2, 4, 8, 16"),
    ],
)
def test_bad_settings_are_rejected_when_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_budget_below_the_window_is_rejected_before_the_model_runs():
    compressor = KVCompressor(pruner=SnapKV(window=32), quantizer=KIVI(bits=16), tokens=16)
    with pytest.raises(ValueError, match="fewer than snapkv's window of 32"):
        compressor.plan(tiny_config("llama"))
    # As a fraction: 1/1024 of an 8k cache is 8 tokens at 16 bits.
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=16), budget=1 / 1024)
    with pytest.raises(ValueError, match="keeps 8 tokens"):
        compressor.plan(tiny_config("llama"))


def test_group_size_that_does_not_divide_head_dim_is_rejected_before_the_model_runs():
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4, group_size=128), tokens=256)
    with pytest.raises(ValueError, match="does not divide head_dim=64"):
        compressor.plan(tiny_config("llama", head_dim=64))


def test_a_model_of_sliding_window_layers_only_needs_sliding_quantize_before_the_model_runs():
    config = tiny_config("mistral")
    config.sliding_window = 4096
    if getattr(config, "layer_types", None):
        config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    with pytest.raises(ValueError, match="sliding=keep leaves nothing to compress"):
        KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=64).plan(config)
    plans = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=64, sliding="quantize").plan(config)
    assert [(p.window, p.sliding, p.bits, p.tokens) for p in plans] == [(4096, "quantize", 4, None)] * 4


def test_layer_override_past_the_last_layer_is_rejected():
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1 / 64, layers=[{"layers": "2-9", "bits": 8}])
    with pytest.raises(ValueError, match="past the model's 4 layers"):
        compressor.plan(tiny_config("llama"))


# -- the dtypes users run: models built in bfloat16 and float16, through sdpa and eager ---------------------------


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bits16_with_budget_above_length_reproduces_the_uncompressed_model_bit_for_bit_in_every_dtype(
    dtype, attn, tiny_models
):
    model, _ = tiny_models("llama", dtype=dtype, attn=attn)
    assert model.dtype == getattr(torch, dtype)
    ids = prompt(90, seed=3)
    reference, _ = generate(model, ids, new_tokens=4)
    # At 16 bits the quantizer stores nothing of its own: one per pruner, alternating, is enough.
    for pruner_cls, quantizer_cls in zip(PRUNERS, itertools.cycle([KIVI, FlexGenOutlier])):
        kwargs = {} if pruner_cls is NoPruner else {"tokens": 500}
        compressor = KVCompressor(pruner=pruner_cls(), quantizer=quantizer_cls(bits=16), **kwargs)
        out, cache = generate(model, ids, compressor, new_tokens=4)
        assert torch.equal(out.sequences, reference.sequences)
        for ours, theirs in zip(out.logits, reference.logits):
            assert torch.equal(ours, theirs), f"{compressor.describe()} changed the {dtype} {attn} logits"
        assert all(not layer.compressed and layer.keys.dtype == model.dtype for layer in cache.layers)


def forced_decode_logits(model, ids, forced, compressor):
    """Logits (float32) of every step of a decode that is fed the tokens ``forced``, one at a time, after ``ids``."""
    logits = []
    with compressor.attach(model), torch.no_grad():
        cache = compressor.new_cache(model)
        step = model(ids, **cache_kwargs(model, cache), logits_to_keep=1)
        for i, token in enumerate(forced):
            logits.append(step.logits[:, -1].float())
            position = torch.tensor([[ids.shape[1] + i]])
            step = model(token.view(1, 1), **cache_kwargs(model, cache), position_ids=position, logits_to_keep=1)
    return torch.stack(logits), cache


@pytest.mark.parametrize(
    ("dtype", "attn", "quantizer"),
    [
        ("float16", "sdpa", KIVI(bits=4, group_size=32)),
        ("bfloat16", "eager", FlexGenOutlier(bits=8, group_size=32)),
    ],
    ids=["float16-sdpa-kivi4", "bfloat16-eager-flexgen_outlier8"],
)
def test_compressed_decoding_in_half_precision_stays_within_the_dtypes_own_distance_from_float32(
    dtype, attn, quantizer, tiny_models
):
    """A model built in ``dtype`` against the same weights in float32 (an exact upcast), both compressed alike
    (StreamingLLM keeps the same positions whatever the dtype; the float32 one stores everything in float32):
    36 decoded tokens go through the quantized prefix, a decoded block and the residual window, and the logits
    stay as close to float32 as the uncompressed model in ``dtype`` does."""
    model, _ = tiny_models("llama", dtype=dtype, attn=attn)
    reference = copy.deepcopy(model).float()
    ids, forced = prompt(160, seed=9), prompt(36, seed=10)[0]
    half, _ = forced_decode_logits(model, ids, forced, KVCompressor())
    full, _ = forced_decode_logits(reference, ids, forced, KVCompressor())
    own = (half - full).abs().max()
    compressor = KVCompressor(pruner=StreamingLLM(), quantizer=quantizer, tokens=96)
    ours, cache = forced_decode_logits(model, ids, forced, compressor)
    float32 = dataclasses.replace(compressor, storage_dtype="model")
    theirs, reference_cache = forced_decode_logits(reference, ids, forced, float32)
    layer = cache.layers[0]
    assert layer.prefix[0].keys.scale.dtype == layer.residual_keys.dtype == model.dtype
    assert reference_cache.layers[0].residual_keys.dtype == torch.float32
    assert layer.decoded.uniform_length == 32 and layer.residual_keys.shape[2] == 4
    # What compression moves the float32 logits by, and what the dtype adds to it: far less. The dtype's part is
    # more than its own rounding: a key that rounds differently in ``dtype`` can land on the other side of a code
    # boundary and move by a whole quantization step (rare, a step each).
    compression = (theirs - full).abs().max()
    assert compression > 10 * own, "compression should move the logits more than the dtype does"
    assert (ours - theirs).abs().max() <= max(2 * own, compression / 10)
