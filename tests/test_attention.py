"""qpruning's attention wrapper around flash_attention_2, which cannot run on a CPU: a stand-in takes its place in
transformers' registry, for the duration of each test only, and records what the wrapper hands it."""

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from qpruning import KIVI, KVCompressor, SnapKV
from qpruning.transformers_api import cache_kwargs

PROMPT = 90


class FlashStandIn:
    """Records each call, then computes what flash attention would (causal over the keys it is given)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        self.calls.append(
            dict(layer=module.layer_idx, query=query, key=key, value=value, mask=attention_mask, dropout=dropout,
                 scaling=scaling, kwargs=kwargs)
        )
        return sdpa_attention_forward(
            module, query, key, value, None, dropout=dropout, scaling=scaling, is_causal=query.shape[2] > 1
        )


@pytest.fixture
def flash(monkeypatch, tiny_models):
    """A tiny model whose attention is ``flash_attention_2``, served by a :class:`FlashStandIn`."""
    stand_in = FlashStandIn()
    monkeypatch.setitem(AttentionInterface._global_mapping, "flash_attention_2", stand_in)
    model, _ = tiny_models("llama")
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    return model, stand_in


def ids(length=PROMPT, seed=3):
    return torch.randint(100, 40000, (1, length), generator=torch.Generator().manual_seed(seed))


def run(model, compressor=None, new_tokens=3):
    options = dict(max_new_tokens=new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
    if compressor is None:
        return model.generate(ids(), **options)
    with compressor.attach(model):
        assert model.config._attn_implementation == "qpruning_flash_attention_2"
        return model.generate(ids(), **cache_kwargs(model, compressor.new_cache(model)), **options)


def test_uncompressed_layers_hand_flash_attention_exactly_the_models_arguments(flash):
    model, stand_in = flash
    reference = run(model)
    plain = stand_in.calls[:]
    stand_in.calls.clear()
    out = run(model, KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=16), tokens=500))
    assert len(stand_in.calls) == len(plain) == model.config.num_hidden_layers * 3  # prefill and two decode steps
    for ours, theirs in zip(stand_in.calls, plain):
        assert ours["layer"] == theirs["layer"]
        for name in ("query", "key", "value"):
            assert torch.equal(ours[name], theirs[name]), name
        assert ours["mask"] is None and theirs["mask"] is None  # flash attention's mask: none when fully causal
        assert ours["dropout"] == theirs["dropout"] == 0.0
        assert ours["scaling"] == theirs["scaling"] == model.model.layers[0].self_attn.scaling
        assert ours["kwargs"].keys() == theirs["kwargs"].keys()
        assert torch.equal(ours["kwargs"]["position_ids"], theirs["kwargs"]["position_ids"])
    for ours, theirs in zip(out.logits, reference.logits):
        assert torch.equal(ours, theirs)


def test_flash_attention_runs_the_prefill_and_the_compressed_layers_answer_the_decode_steps(flash):
    model, stand_in = flash
    out = run(model, KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4, group_size=32), tokens=64), new_tokens=4)
    layers = model.config.num_hidden_layers
    # Only the prefill reaches flash attention, once per layer, with every prompt token and the layer's scaling.
    assert [c["layer"] for c in stand_in.calls] == list(range(layers))
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    for call in stand_in.calls:
        assert call["query"].shape == (1, heads, PROMPT, model.config.head_dim)
        assert call["key"].shape == call["value"].shape == (1, kv_heads, PROMPT, model.config.head_dim)
        assert call["scaling"] == model.model.layers[0].self_attn.scaling
    assert out.sequences.shape[1] == PROMPT + 4
    # The decode steps read the compressed cache (64 tokens kept), so the logits differ from full attention's.
    stand_in.calls.clear()
    full = run(model, new_tokens=4)
    assert not torch.allclose(out.logits[1], full.logits[1])


def test_a_padded_batch_hands_flash_attention_the_2d_padding_mask(flash, tiny_models):
    model, stand_in = flash
    _, tokenizer = tiny_models("llama")
    pad = tokenizer.pad_token_id
    batch = torch.cat([ids(), torch.cat([torch.full((1, 20), pad), ids(PROMPT - 20, seed=4)], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :20] = 0
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4, group_size=32), tokens=64)
    with compressor.attach(model):
        cache = compressor.new_cache(model)
        model.generate(batch, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=pad,
                       **cache_kwargs(model, cache))
    prefill = stand_in.calls[0]
    assert torch.equal(prefill["mask"].bool(), mask.bool())
    # The padding never reaches the compressed cache: the padded row keeps only its 70 real tokens' best 64.
    assert cache.layers[0].kept_per_row.view(2, -1).eq(64).all()
    assert torch.equal(cache.key_valid, mask.bool())
