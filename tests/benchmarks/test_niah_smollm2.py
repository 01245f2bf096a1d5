"""End to end on the real SmolLM2-135M-Instruct with the full cache: plain greedy ``model.generate``.

Slow (about a minute and a half on two CPU cores): run with ``pytest -m slow tests/benchmarks``.
"""

from __future__ import annotations

import logging
import time

import pytest
import torch

from qpruning.benchmarks import get_benchmark

logger = logging.getLogger(__name__)


@pytest.mark.slow
def test_smollm2_finds_the_needle_in_most_of_a_small_grid_up_to_4k(smollm2):
    model, tokenizer = smollm2
    window = 8192
    bench = get_benchmark("niah", lengths=[1000, 2000, 3500], depths=[0, 50, 100])
    bench.validate(window)
    records = []
    start = time.monotonic()
    for sample in bench.samples(tokenizer):
        ids = bench.encode(sample, tokenizer, bench.max_input_tokens(sample, window))
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                pad_token_id=tokenizer.eos_token_id,
                **bench.generation_kwargs(sample, tokenizer),
            )
        prediction = bench.postprocess(sample, tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True))
        records.append(
            {
                "task": sample.task,
                "score": bench.score(sample, prediction),
                "status": "ok",
                "length": sample.length,
                "prediction": prediction,
                "extra": {**sample.extra, **bench.details(sample, prediction)},
            }
        )
        logger.info("%s (%d tokens): %r", sample.id, len(ids), prediction)
    elapsed = time.monotonic() - start
    result = bench.aggregate(records)
    print(
        f"\nNIAH SmolLM2 grid: {elapsed:.0f} s, contains {result['contains_rate']:.0f}%, ROUGE-1 F {result['score']:.1f}"
    )
    assert len(records) == 9
    assert result["contains_rate"] >= 90.0, [r["prediction"] for r in records]
    assert result["score"] >= 80.0
