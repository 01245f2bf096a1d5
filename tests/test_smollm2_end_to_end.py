"""The real model: SmolLM2-135M-Instruct finds a needle through a pruned, 4-bit cache.

Slow (about a minute on two CPU cores); ``make test-fast`` leaves it out.
"""

import pytest
import torch

from qpruning import KIVI, KVCompressor, SnapKV
from qpruning.benchmarks import get_benchmark
from qpruning.transformers_api import cache_kwargs


@pytest.mark.slow
def test_smollm2_finds_a_needle_in_3k_tokens_with_snapkv_at_an_eighth_of_the_memory_in_4_bit(smollm2):
    model, tokenizer = smollm2
    bench = get_benchmark("niah", lengths=[3000], depths=[0])
    (sample,) = list(bench.samples(tokenizer))
    ids = bench.encode(sample, tokenizer, bench.max_input_tokens(sample, 8192))
    assert 2800 <= len(ids) <= 3000
    # 1/8 of this prompt's 16-bit cache, spent on 4x the tokens at 4 bits: half the tokens are kept.
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1 / 8, full_cache_tokens=len(ids))
    with compressor.attach(model), torch.inference_mode():
        cache = compressor.new_cache(model)
        out = model.generate(
            torch.tensor([ids]), **cache_kwargs(model, cache), pad_token_id=tokenizer.eos_token_id,
            **bench.generation_kwargs(sample, tokenizer),
        )
    prediction = bench.postprocess(sample, tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))
    summary = cache.prefill_summary
    assert summary["kept_tokens"] == len(ids) // 2
    # Nominal accounting: scales and zeros (+12.5% at head_dim 64, group 64) and the 16-bit tail of each row's
    # last partial key group (under 64 of ~1435 tokens) come on top of the 1/8.
    assert summary["kv_bytes"] <= 1.25 * summary["kv_bytes_full"] / 8
    assert "Dolores Park" in prediction, prediction
    assert bench.score(sample, prediction) >= 90
