"""``compat=paper``'s quantizers equal transformers' HQQ cache path (tests/paper_reference.py) at 2/4/8 bits."""

from __future__ import annotations

import pytest
import torch

from qpruning import KVCompressor
from qpruning.cache.budget import LayerPlan
from qpruning.cache.cache import QPrunedCache
from qpruning.cache.context import reset_active_forward, set_active_forward
from qpruning.cache.hqq_cache import HQQCache, paper_quantizer
from qpruning.cache.quantizers import HQQ, KIVI, FlexGen, FlexGenOutlier, KIVIOutlier
from qpruning.errors import ConfigError
from qpruning.pruners import NoPruner, SnapKV
from tests import paper_reference as ref

pytest.importorskip("hqq")
HEADS, HEAD_DIM = 8, 64


def _layer_through_paper_mode(quantizer, bits, keys, values, pruner=None, tokens=None, query=None):
    compressor = KVCompressor(pruner=pruner or NoPruner(), quantizer=quantizer, tokens=tokens, compat="paper",
                              storage_dtype="model")
    cache = QPrunedCache(1, plans=[LayerPlan(bits=bits, tokens=tokens)])
    cache.layers[0].update(keys, values)
    if query is None:
        query = torch.randn(keys.shape[0], keys.shape[1], keys.shape[2], HEAD_DIM)
    compressor.compress_layer(cache, 0, query, keys, values, HEAD_DIM**-0.5)
    layer = cache.layers[0]
    (segment,) = layer.prefix
    k, v = segment.dequantized(keys.dtype)
    rows = layer.rows
    return cache, k.view(1, rows, -1, HEAD_DIM), v.view(1, rows, -1, HEAD_DIM)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize(("quantizer", "axis_key"), [(KIVI, 1), (FlexGen, 0)])
def test_the_dequantized_cache_is_the_hqq_caches(bits, quantizer, axis_key):
    gen = torch.Generator().manual_seed(bits)
    keys, values = (torch.randn(1, HEADS, 96, HEAD_DIM, generator=gen) for _ in range(2))
    cache, k, v = _layer_through_paper_mode(quantizer(bits=bits), bits, keys, values)
    expected_k, expected_v = ref.hqq_cache_kv_roundtrip(keys, values, bits, 64, axis_key, 0, optimize=False)
    assert torch.equal(k, expected_k) and torch.equal(v, expected_v)
    held = cache.nbytes()
    numbers = 2 * keys.numel()
    assert held["packed"] == numbers * bits // 8
    assert held["scales"] == held["zeros"] == numbers // 64 * keys.element_size()


def test_half_precision_matches_too():
    gen = torch.Generator().manual_seed(3)
    keys, values = (torch.randn(1, HEADS, 64, HEAD_DIM, generator=gen).half() for _ in range(2))
    _, k, v = _layer_through_paper_mode(KIVI(bits=4), 4, keys, values)
    expected_k, expected_v = ref.hqq_cache_kv_roundtrip(keys, values, 4, 64, 1, 0, optimize=False)
    assert torch.equal(k, expected_k) and torch.equal(v, expected_v)


def test_the_optimizer_is_explicit_and_changes_the_values():
    gen = torch.Generator().manual_seed(5)
    keys, values = (torch.randn(1, HEADS, 64, HEAD_DIM, generator=gen) for _ in range(2))
    _, k_on, _ = _layer_through_paper_mode(HQQ(bits=2, layout="kivi", optimize=True), 2, keys, values)
    expected_on, _ = ref.hqq_cache_kv_roundtrip(keys, values, 2, 64, 1, 0, optimize=True)
    torch.testing.assert_close(k_on, expected_on)
    _, k_off, _ = _layer_through_paper_mode(KIVI(bits=2), 2, keys, values)
    assert not torch.equal(k_on, k_off)


@pytest.mark.parametrize(("quantizer", "axis_key"), [(KIVIOutlier, 1), (FlexGenOutlier, 0)])
def test_outliers_are_the_papers_zero_filled_and_restored(quantizer, axis_key):
    gen = torch.Generator().manual_seed(7)
    keys, values = (3 * torch.randn(1, HEADS, 64, HEAD_DIM, generator=gen) for _ in range(2))
    assert int((keys.abs() > 6).sum()) > 0
    cache, k, v = _layer_through_paper_mode(quantizer(bits=4), 4, keys, values)
    assert torch.equal(k, ref.hqq_outlier_roundtrip(keys, 4, 64, axis_key, 6.0))
    assert torch.equal(v, ref.hqq_outlier_roundtrip(values, 4, 64, 0, 6.0))
    outliers = int((keys.abs() > 6).sum() + (values.abs() > 6).sum())
    assert cache.nbytes()["outliers"] == outliers * (4 + keys.element_size())  # int32 index + exact value


def test_pruned_rows_are_quantized_as_one_layer_tensor_and_decoded_tokens_stay_16_bit():
    gen = torch.Generator().manual_seed(11)
    seq, tokens = 160, 64
    keys, values = (torch.randn(1, 2, seq, HEAD_DIM, generator=gen) for _ in range(2))
    query = torch.randn(1, HEADS, seq, HEAD_DIM, generator=gen)
    cache, k, v = _layer_through_paper_mode(KIVI(bits=4), 4, keys, values, SnapKV(window=8), tokens, query)
    # the code caches the selected tokens in topk order (decreasing score), then the window
    kept = ref.snapkv_keep(query, keys, tokens, 8, ordered=True)
    assert torch.equal(kept.sort(dim=-1).values, cache.kept_positions(0))  # [1, 8 query-head rows, 64], ascending
    expanded_k = ref.expand_kv_heads(keys, HEADS)
    expanded_v = ref.expand_kv_heads(values, HEADS)
    gathered_k = torch.gather(expanded_k, 2, kept.unsqueeze(-1).expand(-1, -1, -1, HEAD_DIM))
    gathered_v = torch.gather(expanded_v, 2, kept.unsqueeze(-1).expand(-1, -1, -1, HEAD_DIM))
    expected_k, expected_v = ref.hqq_cache_kv_roundtrip(gathered_k, gathered_v, 4, 64, 1, 0, optimize=False)
    assert torch.equal(k, expected_k) and torch.equal(v, expected_v)
    layer = cache.layers[0]
    token = set_active_forward(object())  # decoding happens inside a compressed forward
    try:
        for _ in range(70):  # more than a KIVI residual block: still never quantized
            layer.update(torch.randn(1, 2, 1, HEAD_DIM), torch.randn(1, 2, 1, HEAD_DIM))
            layer.flush()
    finally:
        reset_active_forward(token)
    assert layer.decoded is None and layer.residual_keys.shape[1:3] == (HEADS, 70)


def test_paper_quantizers_keep_their_names_and_refuse_what_the_paper_had_not():
    assert paper_quantizer(KIVI(bits=4)).name == "kivi"
    assert paper_quantizer(FlexGen(bits=2)).hqq_key_axis == 0
    assert paper_quantizer(HQQ(bits=4, layout="flexgen", optimize=True)) == HQQCache(
        bits=4, source="flexgen", optimize=True)
    assert isinstance(KVCompressor(quantizer=KIVI(bits=4), compat="paper").quantizer, HQQCache)
    assert isinstance(KVCompressor(quantizer=KIVI(bits=4)).quantizer, KIVI)
    with pytest.raises(ConfigError, match="compat=paper"):
        HQQCache(bits=4, outliers={"fraction": 0.01})


def test_paper_quantized_layers_attend_through_the_reference_backend_whatever_the_kernel_setting():
    from qpruning.backends import reference_attention

    compressor = KVCompressor(quantizer=KIVI(bits=16), compat="paper", kernel="on",
                              layers=[{"layers": "0", "bits": 4}])
    assert compressor.backend_for(torch.zeros(1), bits=4) is reference_attention
