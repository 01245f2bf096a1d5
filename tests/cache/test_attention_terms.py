"""Attention over a compressed layer applies what the model's own attention applies: each term of
qpruning.cache.terms against the model's eager attention, on the tensors of a real attention module of the family
(its scaling, soft-capping, sinks), with the model's own sliding-window mask."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from qpruning.backends.reference import reference_attention
from qpruning.backends.triton import fused_attention
from qpruning.cache.segments import Segment
from qpruning.cache.terms import AttentionTerms
from qpruning.models import TINY_FAMILIES, tiny_model


def _module(family: str, layer: int):
    model, _ = tiny_model(family, num_hidden_layers=2)
    return model, model.model.layers[layer].self_attn


def _model_attention(model, module, query, key, value, window, **kwargs):
    """The family's own eager attention with the model's causal (and sliding-window) additive mask, for the last
    ``q`` positions of ``key``."""
    q_len, seq = query.shape[2], key.shape[2]
    q_pos = torch.arange(seq - q_len, seq).view(-1, 1)
    k_pos = torch.arange(seq).view(1, -1)
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    mask = torch.zeros(1, 1, q_len, seq).masked_fill(~allowed, torch.finfo(torch.float32).min)
    eager = sys.modules[type(module).__module__].eager_attention_forward
    out, _ = eager(module, query, key, value, mask, scaling=module.scaling, **kwargs)
    return out


def _segments(key, value):
    batch, heads, seq, d = key.shape
    lengths = torch.full((batch * heads,), seq, dtype=torch.int32)
    return [Segment.build(key.reshape(-1, d), value.reshape(-1, d), lengths)]


def _qkv(module, q_len, seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    config = module.config
    d = module.head_dim
    query = torch.randn(1, config.num_attention_heads, q_len, d, generator=g) * 3
    key = torch.randn(1, config.num_key_value_heads, seq, d, generator=g) * 3
    value = torch.randn(1, config.num_key_value_heads, seq, d, generator=g)
    return query, key, value


@pytest.mark.parametrize("q_len", [1, 5])
def test_gemma2_softcapping_scaling_and_sliding_window_equal_the_models_attention(q_len):
    model, module = _module("gemma2", 0)  # layer 0 is a sliding-window layer
    window = model.config.sliding_window
    assert module.attn_logit_softcapping and module.scaling != module.head_dim**-0.5
    query, key, value = _qkv(module, q_len, seq=40)
    expected = _model_attention(model, module, query, key, value, window, softcap=module.attn_logit_softcapping)
    terms = AttentionTerms.from_call({"softcap": module.attn_logit_softcapping}, window=window)
    got = reference_attention(_segments(key, value), query, module.scaling, terms)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # without the terms the result is another one: each term matters on these inputs
    plain = reference_attention(_segments(key, value), query, module.scaling)
    assert not torch.allclose(plain, expected, atol=1e-3)


@pytest.mark.parametrize("q_len", [1, 3])
def test_gpt_oss_sinks_equal_the_models_attention(q_len):
    model, module = _module("gpt_oss", 1)  # layer 1 is global
    with torch.no_grad():
        module.sinks.copy_(torch.linspace(4.0, 12.0, module.sinks.numel()))
    query, key, value = _qkv(module, q_len, seq=30, seed=1)
    expected = _model_attention(model, module, query, key, value, None, s_aux=module.sinks)
    terms = AttentionTerms.from_call({"s_aux": module.sinks})
    got = reference_attention(_segments(key, value), query, module.scaling, terms)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reference_attention(_segments(key, value), query, module.scaling), expected, atol=1e-3)


def test_gpt_oss_sinks_with_a_sliding_window_equal_the_models_attention():
    model, module = _module("gpt_oss", 0)  # a sliding layer: sinks and window together
    with torch.no_grad():
        module.sinks.copy_(torch.linspace(1.0, -1.0, module.sinks.numel()))
    window = model.config.sliding_window
    query, key, value = _qkv(module, 1, seq=50, seed=2)
    expected = _model_attention(model, module, query, key, value, window, s_aux=module.sinks)
    got = reference_attention(_segments(key, value), query, module.scaling,
                              AttentionTerms.from_call({"s_aux": module.sinks}, window=window))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_fused_backend_falls_back_to_the_reference_for_terms_it_does_not_implement(caplog):
    model, module = _module("gemma2", 0)
    query, key, value = _qkv(module, 1, seq=20, seed=3)
    terms = AttentionTerms(softcap=20.0, window=8)
    with caplog.at_level(logging.INFO, logger="qpruning.backends.triton"):
        got = fused_attention(_segments(key, value), query, module.scaling, terms)
    assert torch.equal(got, reference_attention(_segments(key, value), query, module.scaling, terms))
    assert "does not implement logit soft-capping and a sliding window" in caplog.text


def test_every_hybrid_family_hands_its_terms_to_the_attention_call():
    """The families whose attention applies a term pass it as the keyword the wrapper reads."""
    for name, keyword in (("gemma2", "softcap"), ("gpt_oss", "s_aux")):
        assert name in TINY_FAMILIES
        model, module = _module(name, 0)
        source = sys.modules[type(module).__module__]
        import inspect

        assert f"{keyword}=" in inspect.getsource(type(module).forward), (name, keyword, source.__name__)
