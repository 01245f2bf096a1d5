"""Figure 1's cross-entropy: samples cut in tokens, and a continuation cross-entropy that is exact with the full
cache, causal and position-correct with a pruned cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from qpruning.benchmarks import BenchmarkConfigError, CrossEntropy, SampleError, continuation_cross_entropy
from qpruning.transformers_api import cache_kwargs


class PrefillPruningCache(DynamicCache):
    """A stand-in compressor: after the prefill, each layer keeps only the first ``head`` and last ``tail`` tokens
    (the prefill itself still attends to everything, as with a real pruner)."""

    def __init__(self, head: int, tail: int):
        super().__init__()
        self.head, self.tail = head, tail

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        prefill = len(self.layers) <= layer_idx or self.layers[layer_idx].get_seq_length() == 0
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if prefill and key_states.shape[-2] > self.head + self.tail:
            layer = self.layers[layer_idx]
            keep = list(range(self.head)) + list(range(keys.shape[-2] - self.tail, keys.shape[-2]))
            layer.keys, layer.values = layer.keys[:, :, keep].clone(), layer.values[:, :, keep].clone()
        return keys, values


@pytest.fixture(scope="module")
def tiny():
    from qpruning.models import tiny_model

    model, tokenizer = tiny_model("llama", seed=3)
    return model, tokenizer


def _ids(n, offset=0):
    return [(17 * i + 5 + offset) % 4000 + 100 for i in range(n)]


def test_full_cache_cross_entropy_equals_one_full_forward(tiny):
    model, _ = tiny
    prefix, continuation = _ids(40), _ids(12, 7)
    with torch.no_grad():
        logits = model(torch.tensor([prefix + continuation])).logits[0]
    expected = F.cross_entropy(logits[len(prefix) - 1 : -1], torch.tensor(continuation)).item()
    for chunk in (1, 5, None):
        assert continuation_cross_entropy(model, prefix, continuation, chunk_size=chunk) == pytest.approx(
            expected, rel=1e-5
        )


def test_pruned_cache_is_causal_and_keeps_original_positions(tiny):
    model, _ = tiny
    prefix, continuation = _ids(64), _ids(10, 3)
    token_by_token = continuation_cross_entropy(
        model, prefix, continuation, PrefillPruningCache(4, 8), chunk_size=1
    )
    one_pass = continuation_cross_entropy(
        model, prefix, continuation, PrefillPruningCache(4, 8), chunk_size=None
    )
    # all at once through the pruned cache = token by token: no continuation token sees a later one
    assert one_pass == pytest.approx(token_by_token, rel=1e-5)
    full = continuation_cross_entropy(model, prefix, continuation)
    assert token_by_token != pytest.approx(full, rel=1e-3)  # the pruning did change what the model sees

    # reference by hand: the kept prefix entries at their original positions, then the continuation at 64, 65...
    with torch.no_grad():
        ref_cache = DynamicCache()
        model(torch.tensor([prefix]), **cache_kwargs(model, ref_cache), use_cache=True)
        keep = list(range(4)) + list(range(56, 64))
        for layer in ref_cache.layers:
            layer.keys, layer.values = layer.keys[:, :, keep], layer.values[:, :, keep]
        logits_last = model(torch.tensor([prefix])).logits[0, -1]
        positions = torch.arange(64, 64 + len(continuation) - 1).unsqueeze(0)
        out = model(torch.tensor([continuation[:-1]]), position_ids=positions, **cache_kwargs(model, ref_cache))
        logits = torch.cat([logits_last[None], out.logits[0]])
    expected = F.cross_entropy(logits, torch.tensor(continuation)).item()
    assert token_by_token == pytest.approx(expected, rel=1e-5)


def test_empty_inputs_are_a_sample_error(tiny):
    model, _ = tiny
    with pytest.raises(SampleError):
        continuation_cross_entropy(model, [], [1, 2])


def test_essay_samples_offline_split_exactly_in_tokens(tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bench = CrossEntropy(length=300, continuation_tokens=40, num_samples=3)
    samples = list(bench.samples(tokenizer))
    assert [s.task for s in samples] == ["essays"] * 3 and len({s.id for s in samples}) == 3
    for sample in samples:
        prefix, continuation = bench.split(sample, tokenizer)
        assert len(prefix) == 300 and len(continuation) == 40
        assert bench.encode(sample, tokenizer, 8192) == prefix
        assert sample.answers == [tokenizer.decode(continuation, skip_special_tokens=True)]
    assert bench.max_input_tokens(samples[0], 8192) == 8192 - 40


def test_gov_report_is_used_when_its_file_is_there(tokenizer, longbench_dir):
    bench = CrossEntropy(length=64, continuation_tokens=16, num_samples=2, data_dir=str(longbench_dir))
    samples = list(bench.samples(tokenizer))
    assert [s.task for s in samples] == ["gov_report"]  # the fixture holds one report
    assert samples[0].id == "ce-gov_report-fixturegov_report0000"
    with pytest.raises(Exception, match="download_longbench"):
        list(CrossEntropy(source="gov_report", data_dir="/nonexistent").samples(tokenizer))


def test_scores_are_the_measured_cross_entropies_and_average(tokenizer):
    bench = CrossEntropy()
    sample = None
    assert bench.score(sample, 2.5) == 2.5 and bench.score(sample, "1.25") == 1.25
    with pytest.raises(SampleError):
        bench.score(sample, "not a number")
    result = bench.aggregate(
        [{"task": "essays", "score": 2.0, "status": "ok"}, {"task": "essays", "score": 3.0, "status": "ok"}]
    )
    assert result["score"] == 2.5 and result["lower_is_better"] is True


def test_bad_configurations_are_refused():
    with pytest.raises(BenchmarkConfigError, match="valid: auto, gov_report, essays"):
        CrossEntropy(source="wikitext")
    with pytest.raises(BenchmarkConfigError, match="context window of 4096"):
        CrossEntropy(length=4096, continuation_tokens=256).validate(4096)
