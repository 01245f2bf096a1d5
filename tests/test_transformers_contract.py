"""The transformers entry points qpruning depends on, one test each.

When a transformers release breaks one of them, the failure names the installed transformers version and the
entry point (``transformers 5.24.0: entry point 'generate(cache object)' broke: ...``), rather than surfacing as a
``NoneType`` deep inside compression. ``make test-latest`` runs these against the newest release the bounds in
``pyproject.toml`` admit.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings

import pytest
import torch

from qpruning import KIVI, KVCompressor, SnapKV
from qpruning.cache.cache import QPrunedCache
from qpruning.cache.layer import CompressedLayer
from qpruning.transformers_api import (
    CURRENT_NAME,
    LEGACY_NAME,
    TransformersAPIError,
    cache_argument,
    cache_kwargs,
    check_entry_points,
    from_pretrained_kwargs,
    output_cache,
    transformers_version,
)


@contextlib.contextmanager
def entry_point(name: str):
    """Turn any failure inside the block into one that names the transformers version and the entry point."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - re-raised with the version and the entry point
        pytest.fail(f"transformers {transformers_version()}: entry point {name!r} broke: {type(error).__name__}: {error}")


@contextlib.contextmanager
def no_deprecation_from_our_calls():
    """Fail on a deprecation warning about the cache argument (what our own calls would cause)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    about_cache = [
        str(w.message)
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning)) and LEGACY_NAME in str(w.message)
    ]
    assert not about_cache, f"transformers {transformers_version()}: our calls use a deprecated name: {about_cache}"


def ids(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(100, 30000, (1, length), generator=torch.Generator().manual_seed(seed))


def test_every_entry_point_exists():
    with entry_point("imports and registries (check_entry_points)"):
        check_entry_points()


def test_the_cache_argument_is_a_parameter_of_the_model_and_of_its_decoder(tiny_models):
    model, _ = tiny_models("llama")
    with entry_point("the cache argument of forward"):
        name = cache_argument(model)
        assert cache_argument(model.get_decoder()) == name
        assert name in inspect.signature(type(model).forward).parameters
        assert name in (CURRENT_NAME, LEGACY_NAME)


def test_a_forward_takes_our_cache_under_that_name_and_returns_it(tiny_models):
    model, _ = tiny_models("llama")
    cache = QPrunedCache(model.config.num_hidden_layers)
    with entry_point("forward(cache=...) and the output's cache field"), no_deprecation_from_our_calls():
        out = model(ids(12), **cache_kwargs(model, cache), use_cache=True)
        assert output_cache(out) is cache
        assert cache.get_seq_length() == 12
        assert all(layer.keys.shape[-2] == 12 for layer in cache.layers)


def test_generate_fills_the_very_cache_object_it_is_handed(tiny_models):
    # transformers 5.24 renamed the argument: a hook that read the old name made a second cache, and the model
    # filled the user's object while compression read the other one (NoneType.shape in compress).
    model, _ = tiny_models("llama")
    compressor = KVCompressor(pruner=SnapKV(window=4), quantizer=KIVI(bits=4, group_size=32), tokens=32)
    prompt = ids(80, seed=1)
    with entry_point("generate(cache object) through compressor.attach"), no_deprecation_from_our_calls():
        with compressor.attach(model) as attached:
            cache = compressor.new_cache(model)
            out = model.generate(prompt, **cache_kwargs(model, cache), max_new_tokens=4, do_sample=False)
        assert out.shape[1] == 84
        assert attached.last_cache is cache
        assert all(layer.compressed for layer in cache.layers)
        assert cache.get_seq_length() == 83  # the last generated token is never fed back
        assert cache.prefill_summary["kept_tokens"] == 32


def test_layers_initialise_on_first_update_and_report_their_length():
    layer = CompressedLayer()
    with entry_point("CacheLayerMixin: lazy_initialization, update, get_seq_length, get_mask_sizes"):
        assert not layer.is_initialized
        keys = torch.randn(2, 3, 5, 16)
        out_keys, out_values = layer.update(keys, keys + 1)
        assert layer.is_initialized
        assert torch.equal(out_keys, keys) and torch.equal(out_values, keys + 1)
        assert layer.get_seq_length() == 5
        assert layer.get_mask_sizes(1) == (6, 0)


def test_the_cache_routes_updates_to_our_layers():
    cache = QPrunedCache(2)
    keys = torch.randn(1, 2, 7, 8)
    with entry_point("Cache(layers=...).update(key, value, layer_idx)"):
        cache.update(keys, keys, 1)
        assert cache.layers[1].get_seq_length() == 7
        assert not cache.layers[0].is_initialized


def test_early_initialisation_leaves_a_layer_that_still_fills_on_update():
    # generate may initialise layers in advance with empty tensors (Cache.early_initialization).
    cache = QPrunedCache(2)
    with entry_point("Cache.early_initialization"):
        if hasattr(cache, "early_initialization"):
            cache.early_initialization(1, 2, 8, torch.float32, torch.device("cpu"))
        keys = torch.randn(1, 2, 4, 8)
        cache.update(keys, keys, 0)
        assert torch.equal(cache.layers[0].keys, keys)


def test_attention_registration_adds_a_named_function_and_mask(tiny_models):
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from qpruning import attention

    model, _ = tiny_models("llama")
    with entry_point("AttentionInterface.register / AttentionMaskInterface.register"):
        name = attention.register("sdpa")
        assert name == "qpruning_sdpa"
        assert name in ALL_ATTENTION_FUNCTIONS and name in ALL_MASK_ATTENTION_FUNCTIONS
        compressor = KVCompressor(pruner=SnapKV(window=4), quantizer=KIVI(bits=16), tokens=500)
        prompt = ids(20, seed=2)
        reference = model(prompt).logits
        with compressor.attach(model):
            assert model.config._attn_implementation == name
            ours = model(prompt, **cache_kwargs(model, compressor.new_cache(model))).logits
        assert model.config._attn_implementation == "sdpa"
        assert torch.equal(ours, reference)


def test_from_pretrained_loads_the_models_own_layers(tiny_models, tmp_path):
    # transformers 5.25 kernelizes in from_pretrained by default: without the `kernels` package it raises
    # ("Kernels are not available"), with it it swaps layers for kernels fetched from the Hub.
    from transformers import AutoModelForCausalLM

    model, _ = tiny_models("llama")
    model.save_pretrained(tmp_path)
    with entry_point("from_pretrained(..., **from_pretrained_kwargs())"):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, **from_pretrained_kwargs())
        assert not getattr(loaded, "use_kernels", False)
        prompt = ids(10, seed=3)
        assert torch.equal(loaded(prompt).logits, model(prompt).logits)


def test_an_unknown_cache_argument_is_refused_with_the_version():
    class NoCache(torch.nn.Module):
        def forward(self, input_ids):  # takes no cache at all
            return input_ids

    with pytest.raises(TransformersAPIError, match=rf"transformers {transformers_version()}: .*neither"):
        cache_argument(NoCache())
