"""``compat=paper``: selections per query head equal the paper code's (tests/paper_reference.py), ties included;
the cache holds query-head rows and decodes over them; ``compat`` is validated and recorded."""

from __future__ import annotations

import pytest
import torch

from qpruning import KVCompressor
from qpruning.cache.budget import LayerPlan
from qpruning.cache.cache import QPrunedCache
from qpruning.cache.quantizers import KIVI
from qpruning.compat import PAPER_PRUNERS, paper_pruner
from qpruning.errors import ConfigError
from qpruning.pruners import H2O, PyramidKV, SnapKV, StreamingLLM, get_pruner
from qpruning.transformers_api import cache_kwargs
from tests import paper_reference as ref
from tests.default_pruners import NOT_IN_THE_PAPER, default_pruner

Q_HEADS, KV_HEADS, HEAD_DIM = 8, 2, 16


def _filled_cache(compressor: KVCompressor, layers: int, tokens: int, keys, values) -> QPrunedCache:
    cache = QPrunedCache(layers, plans=[LayerPlan(bits=16, tokens=tokens)] * layers)
    for layer, (k, v) in enumerate(zip(keys, values)):
        cache.layers[layer].update(k, v)
    return cache


def _compress_random(pruner, tokens: int, seq: int, layers: int = 3, seed: int = 0):
    """Fresh random q/k/v per layer through the compressor in paper mode; returns (cache, queries, keys)."""
    gen = torch.Generator().manual_seed(seed)
    queries = [torch.randn(1, Q_HEADS, seq, HEAD_DIM, generator=gen) for _ in range(layers)]
    keys = [torch.randn(1, KV_HEADS, seq, HEAD_DIM, generator=gen) for _ in range(layers)]
    values = [torch.randn(1, KV_HEADS, seq, HEAD_DIM, generator=gen) for _ in range(layers)]
    compressor = KVCompressor(pruner=pruner, quantizer=KIVI(bits=16), tokens=tokens, compat="paper")
    cache = _filled_cache(compressor, layers, tokens, keys, values)
    layer_tokens = compressor.layer_tokens(cache.plans, seq)
    for layer in range(layers):
        compressor.compress_layer(cache, layer, queries[layer], keys[layer], values[layer], HEAD_DIM**-0.5,
                                  layer_tokens)
    return cache, queries, keys


@pytest.mark.parametrize("seed", [0, 1])
def test_snapkv_keeps_per_query_head_what_the_paper_code_keeps(seed):
    cache, queries, keys = _compress_random(SnapKV(window=8), tokens=40, seq=150, seed=seed)
    for layer, (q, k) in enumerate(zip(queries, keys)):
        kept = cache.kept_positions(layer)
        assert kept.shape == (1, Q_HEADS, 40)
        assert torch.equal(kept, ref.snapkv_keep(q, k, 40, 8))
    # the query heads of one KV head choose differently: the cache really holds one row per query head
    assert not torch.equal(cache.kept_positions(0)[0, 0], cache.kept_positions(0)[0, 1])


@pytest.mark.parametrize("seed", [0, 1])
def test_h2o_uses_the_paper_codes_mask_and_keeps_what_it_keeps(seed):
    cache, queries, keys = _compress_random(H2O(window=8), tokens=40, seq=120, seed=seed)
    for layer, (q, k) in enumerate(zip(queries, keys)):
        assert torch.equal(cache.kept_positions(layer), ref.h2o_keep(q, k, 40, 8))


def test_h2o_in_methods_mode_is_still_causal_and_differs_from_the_paper():
    seq = 120
    _, queries, keys = _compress_random(H2O(window=8), tokens=40, seq=seq)
    q, k = queries[0], keys[0].repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
    paper = paper_pruner(H2O(window=8)).score(q, k, None, HEAD_DIM**-0.5)
    causal = H2O(window=8).score(q, k, None, HEAD_DIM**-0.5)
    assert not torch.allclose(paper, causal)
    torch.testing.assert_close(paper[..., : seq - 8], ref.h2o_scores(q, keys[0], 8), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("window", "sinks"), [(32, None), (0, 4)])
def test_streamingllm_keeps_the_paper_scripts_tokens(window, sinks):
    tokens, seq = 64, 200
    cache, _, _ = _compress_random(StreamingLLM(window=window, sinks=sinks), tokens=tokens, seq=seq)
    # the needle script: budget - 32 first tokens + the last 32; LongBench / RULER: window = budget - 4
    paper_window = window if sinks is None else tokens - sinks
    expected = ref.streamingllm_keep(1, Q_HEADS, seq, tokens, paper_window)
    for layer in range(3):
        assert torch.equal(cache.kept_positions(layer), expected)


@pytest.mark.parametrize(("seq", "tokens", "window", "layers"),
                         [(524, 288, 32, 4), (300, 64, 8, 5), (100, 64, 8, 3), (50, 64, 8, 3)])
def test_pyramidkv_layer_budgets_are_the_paper_codes_integer_steps(seq, tokens, window, layers):
    compressor = KVCompressor(pruner=PyramidKV(window=window), tokens=tokens, compat="paper")
    plans = [LayerPlan(bits=16, tokens=tokens)] * layers
    kept = [min(t, seq) for t in compressor.layer_tokens(plans, seq)]  # a budget over the prompt keeps it all
    assert kept == ref.pyramidkv_layer_tokens(seq, tokens, window, layers)


def test_the_issues_pyramid_example():
    compressor = KVCompressor(pruner=PyramidKV(window=32), tokens=288, compat="paper")
    tokens = compressor.layer_tokens([LayerPlan(bits=16, tokens=288)] * 4, 524)
    assert [t - 32 for t in tokens] == [492, 335, 178, 21]


def test_pyramidkv_keeps_per_layer_and_query_head_what_the_paper_code_keeps():
    seq, tokens, layers = 300, 64, 3
    cache, queries, keys = _compress_random(PyramidKV(window=8), tokens=tokens, seq=seq, layers=layers)
    for layer, (q, k) in enumerate(zip(queries, keys)):
        assert torch.equal(cache.kept_positions(layer), ref.pyramidkv_keep(q, k, tokens, 8, layer, layers))


def test_bytes_count_the_query_head_rows_and_the_full_cache_the_kv_heads():
    tokens, seq = 40, 150
    cache, _, _ = _compress_random(SnapKV(window=8), tokens=tokens, seq=seq)
    summary = cache.summary()
    assert summary["kv_bytes_full"] == 3 * 2 * KV_HEADS * seq * HEAD_DIM * 2
    assert summary["bytes"]["full"] == 3 * 2 * Q_HEADS * tokens * HEAD_DIM * 2
    methods = KVCompressor(pruner=SnapKV(window=8), quantizer=KIVI(bits=16), tokens=tokens)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, Q_HEADS, seq, HEAD_DIM, generator=gen)
    k, v = (torch.randn(1, KV_HEADS, seq, HEAD_DIM, generator=gen) for _ in range(2))
    plain = _filled_cache(methods, 1, tokens, [k], [v])
    methods.compress_layer(plain, 0, q, k, v, HEAD_DIM**-0.5)
    assert plain.kept_positions(0).shape == (1, KV_HEADS, tokens)


def test_kept_positions_before_and_without_compression_are_every_position():
    compressor = KVCompressor(pruner=SnapKV(window=8), quantizer=KIVI(bits=16), tokens=64)
    k = torch.randn(1, KV_HEADS, 20, HEAD_DIM)
    cache = _filled_cache(compressor, 1, 64, [k], [k])
    assert torch.equal(cache.kept_positions(0), torch.arange(20).expand(1, KV_HEADS, 20))


def test_head_wise_kept_positions_are_padded_with_minus_one():
    from qpruning.cache.layer import _positions

    keep = torch.tensor([[[True, False, True, True], [False, True, False, False]]])
    assert _positions(keep, keep.sum(-1)).tolist() == [[[0, 2, 3], [1, -1, -1]]]


def test_paper_mode_decodes_over_query_head_rows_like_the_uncompressed_model(tiny_models):
    """Nothing pruned (the budget covers the prompt) at 16 bits: the paper's cache holds every token once per
    query head, and attention over the repeated rows is the model's own attention."""
    model, _ = tiny_models("llama")
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped-query attention
    ids = torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=6, do_sample=False)
        compressor = KVCompressor(pruner=SnapKV(window=8), quantizer=KIVI(bits=16), tokens=64, compat="paper",
                                  storage_dtype="model")
        with compressor.attach(model):
            cache = compressor.new_cache(model)
            out = model.generate(ids, max_new_tokens=6, do_sample=False, **cache_kwargs(model, cache))
    assert torch.equal(out, plain)
    rows = cache.kept_positions(0).shape[1]
    assert rows == model.config.num_attention_heads
    result = cache.prefill_result()
    # float32 storage (4 bytes a number against the 16-bit reference's 2), q_heads / kv_heads rows
    repeat = model.config.num_attention_heads // model.config.num_key_value_heads
    assert result.bytes["full"] == 2 * repeat * result.kv_bytes_full


def test_paper_mode_prunes_and_generates_on_a_gqa_model(tiny_models):
    model, _ = tiny_models("llama")
    ids = torch.randint(0, model.config.vocab_size, (1, 80), generator=torch.Generator().manual_seed(1))
    compressor = KVCompressor(pruner=H2O(window=8), quantizer=KIVI(bits=16), tokens=32, compat="paper")
    with torch.no_grad(), compressor.attach(model):
        cache = compressor.new_cache(model)
        out = model.generate(ids, max_new_tokens=5, do_sample=False, **cache_kwargs(model, cache))
    assert out.shape[1] == 85
    assert cache.kept_positions(1).shape == (1, model.config.num_attention_heads, 32)
    assert int(cache.layers[1].tokens_per_row()[0]) == 32 + 4  # decoded tokens appended to every query-head row


def test_compat_is_validated_in_one_line():
    with pytest.raises(ConfigError, match="compat='paperr' is not allowed.*methods or paper"):
        KVCompressor(compat="paperr")


@pytest.mark.parametrize("name", NOT_IN_THE_PAPER)
def test_paper_mode_refuses_the_pruners_absent_from_the_paper_code(name):
    with pytest.raises(ConfigError, match=f"pruner={name} is not in the paper's code"):
        KVCompressor(pruner=default_pruner(name), tokens=64, compat="paper")


def test_methods_runs_keep_their_hash_and_paper_runs_get_their_own():
    from qpruning.identity import run_hash

    before = {"pruner": {"name": "snapkv", "window": 32}, "bits": 4, "tokens": 128}
    assert run_hash({**before, "compat": "methods"}) == run_hash(before)
    assert run_hash({**before, "compat": "paper"}) != run_hash(before)


def test_compat_paper_composes_the_paper_scripts_windows_and_a_typed_window_wins():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from qpruning.app import build, register_resolvers
    from tests.test_conf_defaults import CONF

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        def pruner(*overrides):
            return build(compose("config", overrides=list(overrides)), "pruner")

        assert pruner("compat=paper", "pruner=snapkv", "benchmark=longbench") == SnapKV(window=8)
        assert pruner("compat=paper", "pruner=snapkv", "benchmark=niah_small") == SnapKV(window=32)
        assert pruner("compat=paper", "pruner=pyramidkv", "benchmark=niah") == PyramidKV(window=8)
        assert pruner("compat=paper", "pruner=h2o", "benchmark=ruler_small") == H2O(window=8)
        assert pruner("compat=paper", "pruner=streamingllm", "benchmark=ruler") == StreamingLLM(window=0, sinks=4)
        assert pruner("compat=paper", "pruner=streamingllm", "benchmark=niah") == StreamingLLM(window=32)
        assert pruner("compat=paper", "pruner=snapkv", "benchmark=ruler", "pruner.window=16") == SnapKV(window=16)
        assert pruner("compat=methods", "pruner=snapkv", "benchmark=longbench") == SnapKV()
        assert pruner("pruner=streamingllm", "benchmark=longbench") == StreamingLLM()
        cfg = compose("config", overrides=["compat=paper"])
        assert cfg.compat == "paper"
    GlobalHydra.instance().clear()


# The paper code's selection of every pruner compat=paper runs (PAPER_PRUNERS), on a layer's captured queries
# and keys: (query, key, tokens, layer, layers) -> kept positions, as tests/paper_reference.py computes them.
REFERENCES = {
    "streamingllm": lambda q, k, tokens, layer, layers: ref.streamingllm_keep(1, q.shape[1], k.shape[2], tokens, 8),
    "h2o": lambda q, k, tokens, layer, layers: ref.h2o_keep(q, k, tokens, 8),
    "snapkv": lambda q, k, tokens, layer, layers: ref.snapkv_keep(q, k, tokens, 8),
    "pyramidkv": lambda q, k, tokens, layer, layers: ref.pyramidkv_keep(q, k, tokens, 8, layer, layers),
}
CAPTURE_PRUNERS = [get_pruner(name, window=8) for name in PAPER_PRUNERS if name != "none"]


def test_every_pruner_that_paper_mode_runs_has_its_reference():
    assert set(REFERENCES) == set(PAPER_PRUNERS) - {"none"}


def _assert_captured_selections_are_the_paper_codes(model, ids, pruner, monkeypatch, tokens: int = 64):
    """Run ``model`` on ``ids`` in paper mode, capturing every layer's queries and keys at prefill, and compare
    each layer's kept positions with the reference on those very tensors."""
    compressor = KVCompressor(pruner=pruner, quantizer=KIVI(bits=16), tokens=tokens, compat="paper")
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    compress = KVCompressor.compress_layer

    def capture(self, cache, layer_idx, query, key, *args, **kwargs):
        captured[layer_idx] = (query.detach().clone(), key.detach().clone())
        return compress(self, cache, layer_idx, query, key, *args, **kwargs)

    monkeypatch.setattr(KVCompressor, "compress_layer", capture)
    with torch.no_grad(), compressor.attach(model):
        cache = compressor.new_cache(model)
        model(ids, **cache_kwargs(model, cache))
    layers = model.config.num_hidden_layers
    assert len(captured) == layers
    for layer, (q, k) in captured.items():
        kept = cache.kept_positions(layer)
        assert kept.shape[1] == model.config.num_attention_heads
        assert torch.equal(kept, REFERENCES[pruner.name](q, k, tokens, layer, layers)), f"layer {layer}"


@pytest.mark.parametrize("pruner", CAPTURE_PRUNERS, ids=lambda p: p.name)
def test_on_a_tiny_gqa_models_tensors_paper_mode_keeps_what_the_paper_code_keeps(tiny_models, pruner, monkeypatch):
    model, _ = tiny_models("llama")
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped-query attention
    ids = torch.randint(0, model.config.vocab_size, (1, 200), generator=torch.Generator().manual_seed(2))
    _assert_captured_selections_are_the_paper_codes(model, ids, pruner, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("pruner", CAPTURE_PRUNERS, ids=lambda p: p.name)
def test_on_captured_smollm2_tensors_paper_mode_keeps_what_the_paper_code_keeps(smollm2, pruner, monkeypatch):
    """SmolLM2-135M (9 query / 3 KV heads): the real queries and keys of every layer, captured at prefill."""
    model, tokenizer = smollm2
    text = " ".join(f"Item {i} is a {['red', 'green', 'blue'][i % 3]} box." for i in range(60))
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :300]
    _assert_captured_selections_are_the_paper_codes(model, ids, pruner, monkeypatch)


def test_report_cells_prefer_the_paper_mode_run_and_label_the_mode():
    import pandas as pd

    from qpruning.report import labels
    from qpruning.report.selection import pick_runs

    base = {"benchmark": "niah", "model": "m", "pruner": "snapkv", "quant": "kivi", "bits": 4, "group_size": 64,
            "budget_mode": "nominal", "tokens": 128}
    runs = pd.DataFrame([
        {**base, "compat": "paper", "mtime": 1.0, "run_path": "a"},
        {**base, "compat": "methods", "mtime": 2.0, "run_path": "b"},  # more recent, but not the paper's setting
    ])
    picked = pick_runs(runs, ["benchmark", "model", "pruner", "bits", "tokens"])
    assert picked["run_path"].tolist() == ["a"] and picked["n_candidates"].tolist() == [2]
    assert labels.label("compat", "paper") == "paper's code"


def test_paper_runs_get_their_own_folder_and_methods_runs_keep_theirs():
    from tests.test_app import FOLDERS
    from tests.test_config import compose_config

    assert compose_config(["compat=methods"]).run_name == FOLDERS[()]
    paper = compose_config(["compat=paper"]).run_name
    assert paper.startswith("smollm2_135m/niah_small/snapkv-kivi-4bit-g64-b1_16-paper-") and paper != FOLDERS[()]
