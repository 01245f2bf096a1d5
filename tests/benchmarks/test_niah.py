"""Needle-in-a-Haystack: Kamradt's insertion on SmolLM2 tokens, the (length, depth) grid, prompts, ROUGE-1 as
rouge_score computes it, containment, and the grid aggregate."""

from __future__ import annotations

import pytest

from qpruning.benchmarks import BenchmarkConfigError, NeedleInAHaystack, get_benchmark
from qpruning.benchmarks.niah import KEY_PHRASE, NEEDLE, linear_depths
from qpruning.benchmarks.rouge import PorterStemmer, rouge1


@pytest.fixture(scope="module")
def grid(tokenizer):
    bench = NeedleInAHaystack(lengths=[1000, 2500], depths=[0, 37, 50, 100])
    return bench, list(bench.samples(tokenizer))


def test_one_sample_per_cell_with_stable_ids_and_heatmap_coordinates(grid):
    _, samples = grid
    assert [s.id for s in samples] == [
        "niah-L1000-D0", "niah-L1000-D37", "niah-L1000-D50", "niah-L1000-D100",
        "niah-L2500-D0", "niah-L2500-D37", "niah-L2500-D50", "niah-L2500-D100",
    ]  # fmt: skip
    assert samples[5].extra["context_length"] == 2500 and samples[5].extra["depth"] == 37.0
    assert all(s.answers == [NEEDLE.strip()] and s.max_new_tokens == 30 for s in samples)


def test_the_needle_is_inserted_once_at_a_sentence_boundary_at_the_right_depth(grid, tokenizer):
    bench, samples = grid
    needle = NEEDLE.strip()
    for sample in samples:
        text = sample.context
        assert text.count(needle) == 1
        before = text[: text.index(needle)].rstrip("\n")
        if sample.extra["depth"] == 0:
            assert before == ""
        elif sample.extra["depth"] < 100:
            assert before.endswith(".")  # Kamradt: backed up to the previous period
        else:
            assert text.rstrip("\n").endswith(needle)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        budget = sample.extra["context_length"] - bench.final_context_length_buffer
        assert (
            budget - 3 <= len(ids) <= budget + 3
        )  # haystack + needle fill length - 200 (decode/encode drift)
        # depth: the needle starts at or just before depth% of the haystack tokens
        haystack_tokens = budget - len(tokenizer(NEEDLE, add_special_tokens=False)["input_ids"])
        offset = sample.extra["needle_token_offset"]
        assert offset <= sample.extra["depth"] / 100 * haystack_tokens + 1
        if 0 < sample.extra["depth"] < 100:
            assert (
                offset >= sample.extra["depth"] / 100 * haystack_tokens - 120
            )  # backs up at most a sentence or so


def test_prompt_fits_the_cell_length_with_room_for_the_answer(grid, tokenizer):
    bench, samples = grid
    for sample in samples:
        ids = bench.encode(sample, tokenizer, bench.max_input_tokens(sample, 8192))
        assert len(ids) + sample.max_new_tokens <= sample.extra["context_length"]
        text = tokenizer.decode(ids)
        assert "This is a very long story book: <book>" in text
        assert text.rstrip().endswith(
            "Question: What is the best thing to do in San Francisco?\nAnswer:<|im_end|>\n<|im_start|>assistant"
        )


def test_prompts_are_byte_identical_across_runs(tokenizer):
    def run():
        bench = NeedleInAHaystack(lengths=[1200], depths=[25, 75])
        return [
            tokenizer.decode(bench.encode(s, tokenizer, 8000)).encode("utf-8")
            for s in bench.samples(tokenizer)
        ]

    assert run() == run()


def test_default_grid_is_the_papers_from_1000_to_the_window_in_steps_of_100():
    bench = NeedleInAHaystack()
    with pytest.raises(BenchmarkConfigError, match="validate"):
        bench.grid_lengths()
    bench.validate(8192)
    lengths = bench.grid_lengths()
    assert lengths[0] == 1000 and lengths[1] == 1100 and lengths[-1] == 8100 and len(lengths) == 72
    assert bench.grid_depths() == [0, 11, 22, 33, 44, 56, 67, 78, 89, 100]
    assert linear_depths(3) == [0, 50, 100]


def test_lengths_the_model_cannot_hold_are_refused():
    with pytest.raises(BenchmarkConfigError, match="context window of 4096"):
        NeedleInAHaystack(max_length=8000).validate(4096)
    with pytest.raises(BenchmarkConfigError, match="context window of 4096"):
        NeedleInAHaystack(lengths=[1000, 5000]).validate(4096)
    with pytest.raises(BenchmarkConfigError, match="buffer"):
        NeedleInAHaystack(lengths=[200])
    with pytest.raises(BenchmarkConfigError, match="depths"):
        NeedleInAHaystack(depths=[0, 150])


# Reference values: rouge_score 0.1.2 with nltk 3.10 (RougeScorer(['rouge1'], use_stemmer=True).score(needle, x)).
ROUGE_REFERENCE = [
    ("Eat a sandwich and sit in Dolores Park on a sunny day.", 1.0, 0.5714285714285714, 0.7272727272727273),
    (
        "The best thing to do in San Francisco is eating sandwiches and sitting in Dolores Park on sunny days!",
        1.0,
        0.9047619047619048,
        0.9500000000000001,
    ),
    ("Visit the Golden Gate Bridge.", 0.2, 0.047619047619047616, 0.07692307692307693),
    (
        "café — naïve 123 San-Francisco's best-things",
        0.4444444444444444,
        0.19047619047619047,
        0.26666666666666666,
    ),
]


@pytest.mark.parametrize("prediction, precision, recall, fmeasure", ROUGE_REFERENCE)
def test_rouge1_matches_rouge_score_with_porter_stemming(prediction, precision, recall, fmeasure):
    score = rouge1(NEEDLE, prediction)
    assert score.precision == pytest.approx(precision, abs=1e-12)
    assert score.recall == pytest.approx(recall, abs=1e-12)
    assert score.fmeasure == pytest.approx(fmeasure, abs=1e-12)


def test_porter_stemmer_follows_nltk():
    stem = PorterStemmer().stem
    # NLTK_EXTENSIONS mode (nltk.stem.porter default), checked against nltk 3.10 on 14,659 words.
    expected = {
        "caresses": "caress", "ponies": "poni", "dies": "die", "flies": "fli", "dying": "die", "sitting": "sit",
        "sandwiches": "sandwich", "sunny": "sunni", "days": "day", "dolores": "dolor", "generalization": "gener",
        "relational": "relat", "happy": "happi", "enjoy": "enjoy", "skies": "sky", "fully": "fulli",
    }  # fmt: skip
    assert {w: stem(w) for w in expected} == expected


def test_score_is_rouge1_f_times_100_and_details_record_containment(tokenizer):
    bench = NeedleInAHaystack(lengths=[1000], depths=[50])
    sample = next(bench.samples(tokenizer))
    answer = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
    assert bench.score(sample, answer) == pytest.approx(100.0)
    assert bench.score(sample, "") == 0.0
    assert bench.details(sample, answer)["contains"] is True
    details = bench.details(sample, "Go to   DOLORES park.")
    assert details["contains"] is False and details["rouge1_recall"] == pytest.approx(100 * 3 / 21)
    assert bench.details(sample, "You should EAT a sandwich and sit\nin Dolores Park")["contains"] is True
    assert KEY_PHRASE in NEEDLE


def test_postprocess_keeps_the_first_line_like_generation_stopping_at_newline(tokenizer):
    bench = NeedleInAHaystack(lengths=[1000], depths=[50])
    sample = next(bench.samples(tokenizer))
    assert bench.postprocess(sample, "\n  Eat a sandwich.\nSecond line") == "Eat a sandwich."
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    assert newline in bench.generation_kwargs(sample, tokenizer)["eos_token_id"]


def test_aggregate_averages_cells_and_builds_heatmap_grids():
    bench = get_benchmark("niah_small")
    records = [
        {"task": "niah", "score": 100.0, "status": "ok", "extra": {"context_length": 1000, "depth": 0.0, "contains": True}},
        {"task": "niah", "score": 50.0, "status": "ok", "extra": {"context_length": 1000, "depth": 50.0, "contains": False}},
        {"task": "niah", "score": None, "status": "failed", "extra": {"context_length": 2000, "depth": 0.0}},
    ]  # fmt: skip
    result = bench.aggregate(records)
    assert result["score"] == 75.0 and result["contains_rate"] == 50.0
    assert result["grid_scores"] == {"1000": {"0": 100.0, "50": 50.0}}
    assert result["grid_contains"] == {"1000": {"0": True, "50": False}}
