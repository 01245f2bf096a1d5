"""The family matrix: every model family qpruning supports (qpruning.models.TINY_FAMILIES, one entry per family),
as a tiny random model built from a config (no download), through every check below.

A new family is one entry in TINY_FAMILIES; every test here then runs on it.
"""

from __future__ import annotations

import pytest
import torch

from qpruning import KIVI, KVCompressor, SnapKV, cache_kwargs
from qpruning.architectures import refusal
from qpruning.cache.layer import CompressedLayer, SlidingLayer
from qpruning.errors import ConfigError
from qpruning.models import TINY_FAMILIES, tiny_config
from qpruning.pruners import PRUNERS

FAMILIES = sorted(TINY_FAMILIES)
HYBRID = sorted(name for name, f in TINY_FAMILIES.items() if "sliding_attention" in f.config.get("layer_types", []))
# HeadKV reads head scores computed for one model (qpruning/head_scores): its own tests cover it.
MATRIX_PRUNERS = sorted(name for name in PRUNERS if name not in ("none", "headkv"))
PROMPT = 60  # tokens: past the hybrid families' window of 16


@pytest.fixture(scope="module")
def family_models(tiny_models):
    def get(name: str):
        return tiny_models(name, attn=TINY_FAMILIES[name].attn_implementation)

    return get


def _prompt(seed: int = 0, length: int = PROMPT) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, 2000, (1, length), generator=generator)


def _generate(model, ids, compressor=None, new_tokens=8):
    if compressor is None:
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False), None
    with compressor.attach(model):
        cache = compressor.new_cache(model)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                             **cache_kwargs(model, cache))
    return out, cache


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_supported_by_capability(family):
    assert refusal(tiny_config(family)) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_16_bits_with_a_full_budget_reproduces_the_uncompressed_greedy_tokens_exactly(family, family_models):
    model, _ = family_models(family)
    ids = _prompt(1)
    reference, _ = _generate(model, ids)
    compressor = KVCompressor(pruner=SnapKV(window=8), quantizer=KIVI(bits=16), tokens=4096)
    out, _ = _generate(model, ids, compressor)
    assert torch.equal(out, reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_is_pruned_and_quantized_on_global_layers_and_windowed_on_sliding_ones(family, family_models):
    model, _ = family_models(family)
    compressor = KVCompressor(pruner=SnapKV(window=8), quantizer=KIVI(bits=4, group_size=32), tokens=40)
    _, cache = _generate(model, _prompt(2), compressor, new_tokens=1)
    result = cache.prefill_result()
    plans = compressor.plan(model.config)
    for layer, plan, tokens in zip(cache.layers, plans, result.layer_tokens):
        if plan.window is None:
            assert isinstance(layer, CompressedLayer) and layer.compressed and tokens == 40
            assert layer.prefill.bytes["packed"] > 0
        else:  # sliding=keep: the model's own window, 16-bit
            assert isinstance(layer, SlidingLayer) and tokens is None
            assert bool((layer.prefill.tokens_per_row == plan.window - 1).all())
    # (a kept window is the model's float32 tensors here, twice the 16-bit reference: only the globals shrink)
    assert result.kv_bytes_global < result.kv_bytes_full_global
    if family not in HYBRID:
        assert (result.kv_bytes_global, result.kv_bytes_full_global) == (result.kv_bytes, result.kv_bytes_full)


@pytest.mark.parametrize("pruner", MATRIX_PRUNERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_each_pruner_runs_on_each_family(family, pruner, family_models):
    model, _ = family_models(family)
    compressor = KVCompressor(pruner=PRUNERS[pruner](), quantizer=KIVI(bits=4, group_size=32), tokens=48)
    out, cache = _generate(model, _prompt(3), compressor, new_tokens=4)
    assert out.shape == (1, PROMPT + 4)
    kept = [t for t, p in zip(cache.prefill_result().layer_tokens, cache.plans) if p.window is None]
    assert kept and all(t is not None and t < PROMPT for t in kept)


def _forced_logits(model, ids, continuation, compressor=None):
    """Logits of every step of a teacher-forced decode of ``continuation`` after ``ids`` (with the compressor's
    cache, or the model's own)."""
    from transformers import DynamicCache

    def run(cache):
        logits = [model(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(model, cache)).logits[:, -1]]
        for token in continuation:
            step = torch.tensor([[token]])
            mask = torch.ones(1, ids.shape[1] + len(logits), dtype=torch.long)
            logits.append(model(step, attention_mask=mask, **cache_kwargs(model, cache)).logits[:, -1])
        return torch.cat(logits)

    with torch.no_grad():
        if compressor is None:
            return run(DynamicCache(config=model.config)), None
        with compressor.attach(model):
            cache = compressor.new_cache(model)
            return run(cache), cache


@pytest.mark.parametrize("family", HYBRID)
def test_sliding_quantize_at_16_bits_matches_the_model_past_the_window(family, family_models):
    model, _ = family_models(family)
    ids = _prompt(4, length=40)
    continuation = _prompt(5, length=40)[0].tolist()  # 40 steps: the window of 16 slides well past the prompt
    reference, _ = _forced_logits(model, ids, continuation)
    # the window stored in the model's float32 (storage_dtype=model): only the arithmetic differs
    compressor = KVCompressor(pruner=SnapKV(window=8), quantizer=KIVI(bits=16), tokens=4096, sliding="quantize",
                              storage_dtype="model")
    logits, cache = _forced_logits(model, ids, continuation, compressor)
    torch.testing.assert_close(logits, reference, atol=5e-5, rtol=1e-4)
    for layer, plan in zip(cache.layers, cache.plans):
        if plan.window is not None:  # a 16-bit window holds exactly what the model's own holds
            assert bool((layer.tokens_per_row() == plan.window - 1).all())


@pytest.mark.parametrize("family", HYBRID)
def test_sliding_quantize_holds_at_most_the_window_plus_a_block(family, family_models):
    model, _ = family_models(family)
    quantizer = KIVI(bits=4, group_size=32)
    compressor = KVCompressor(pruner=SnapKV(window=8), quantizer=quantizer, tokens=40, sliding="quantize")
    ids = _prompt(6, length=100)
    _, cache = _forced_logits(model, ids, _prompt(7, length=100)[0].tolist(), compressor)
    block = quantizer.residual_length
    for layer, plan in zip(cache.layers, cache.plans):
        if plan.window is not None:
            held = layer.tokens_per_row()
            # the window's last window - 1 tokens, plus at most one block not yet freed and the residual
            assert bool((held >= plan.window - 1).all()) and bool((held < plan.window - 1 + 2 * block).all())
            assert layer.nbytes()["packed"] > 0


def test_the_budget_is_a_fraction_of_the_global_layers_and_exact_mode_pays_for_the_windows():
    config = tiny_config("gemma3", max_position_embeddings=4096)
    nominal = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1 / 16).plan(config)
    exact = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1 / 16, budget_mode="exact").plan(config)
    globals_ = [p for p in nominal if p.window is None]
    assert len(globals_) == 2 and all(p.tokens == 4096 // 16 * 4 for p in globals_)
    # exact: scales and zeros, and the four windows of 15 16-bit tokens, come out of the same bytes
    exact_tokens = [p.tokens for p in exact if p.window is None]
    assert all(t < 4096 // 16 * 4 - 4 * 15 for t in exact_tokens)
    wide = tiny_config("gemma3", max_position_embeddings=4096)
    wide.sliding_window = 1024
    with pytest.raises(ConfigError, match="sliding-window layers' windows alone"):
        KVCompressor(pruner=SnapKV(window=4), quantizer=KIVI(bits=4), budget=1 / 64, budget_mode="exact").plan(wide)


def test_pyramidkv_spreads_the_budget_over_the_global_layers_only():
    config = tiny_config("gemma3", num_hidden_layers=12)
    compressor = KVCompressor(pruner=PRUNERS["pyramidkv"](window=8), quantizer=KIVI(bits=16), tokens=64)
    plans = compressor.plan(config)
    tokens = compressor.layer_tokens(plans, seq_len=1000)
    assert [t is None for t in tokens] == [p.window is not None for p in plans]
    spread = [t for t in tokens if t is not None]
    assert len(spread) == 4 and spread == sorted(spread, reverse=True) and spread[0] > spread[-1]


def test_layer_overrides_on_sliding_layers_need_sliding_quantize():
    config = tiny_config("gemma3")
    with pytest.raises(ConfigError, match="sliding=keep holds as the model does"):
        KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1 / 16,
                     layers=[{"layers": "0-2", "bits": 8}]).plan(config)
    plans = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1 / 16, sliding="quantize",
                         layers=[{"layers": "0-2", "bits": 8}]).plan(config)
    assert [p.bits for p in plans[:4]] == [8, 8, 8, 4]


def test_compat_paper_refuses_hybrid_models():
    with pytest.raises(ConfigError, match="full-attention models only"):
        KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=64, compat="paper").plan(tiny_config("gemma3"))


def _config(model_type: str, **kwargs):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **kwargs)


@pytest.mark.parametrize(
    ("model_type", "kwargs", "reason"),
    [
        ("deepseek_v3", {"num_hidden_layers": 2}, "multi-head latent attention"),
        ("qwen3_next", {"num_hidden_layers": 4}, "linear_attention layers"),
        ("jamba", {"num_hidden_layers": 4}, "linear_attention layers"),
        ("t5", {}, "encoder-decoder"),
        ("llama4_text", {"num_hidden_layers": 4}, "chunked attention"),
        ("mamba", {}, "linear_attention layers"),
        ("falcon_h1", {}, "hybrid layers"),
        ("gemma3n_text", {}, "share key/value caches"),
    ],
)
def test_models_that_cannot_work_are_refused_in_one_line_naming_the_missing_property(model_type, kwargs, reason):
    config = _config(model_type, **kwargs)
    with pytest.raises(ConfigError, match=reason) as error:
        KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=64).plan(config)
    assert "\n" not in str(error.value) and model_type in str(error.value)


def test_sliding_is_part_of_a_runs_identity_and_its_default_keeps_the_folders_of_before():
    from test_config import compose_config

    keep = compose_config(["model=tiny_gemma3"])
    assert compose_config(["model=tiny_gemma3", "sliding=keep"]).run_name == keep.run_name
    assert compose_config(["model=tiny_gemma3", "sliding=quantize"]).run_name != keep.run_name


def test_a_hybrid_model_runs_from_the_application_and_records_the_global_ratio(tmp_path):
    import json

    from test_config import compose_config

    from qpruning.app import runner_from_config

    for mode in ("keep", "quantize"):
        cfg = compose_config(["model=tiny_gemma3", f"sliding={mode}", "benchmark=niah_small", "limit=1",
                              "benchmark.max_new_tokens=4", "tokens=64"])
        runner = runner_from_config(cfg, tmp_path / mode)
        runner.run()
        metrics = json.loads((tmp_path / mode / "metrics.json").read_text())
        assert metrics["config"]["sliding"] == mode and metrics["samples"] == 1
        assert 0 < metrics["kv_ratio_global"] < 1
        assert metrics["kv_bytes_global"] < metrics["kv_bytes"]
