"""RULER: generated samples hit the target length for SmolLM2's tokenizer, hold each needle or answer exactly as
often as the task intends, are reproducible for a seed, and are scored as RULER's evaluation does."""

from __future__ import annotations

import logging
import re
from collections import Counter

import pytest

from qpruning.benchmarks import BenchmarkConfigError, Ruler
from qpruning.benchmarks.ruler import (
    ALL_TASKS,
    PAPER_TASKS,
    TASKS,
    postprocess_pred,
    string_match_all,
    string_match_part,
)
from qpruning.benchmarks.ruler.generators import fwe_counts, zeta

SYNTHETIC = [t for t in ALL_TASKS if not t.startswith("qa")]


def _one_per_task(tokenizer, length, tasks=SYNTHETIC, **kwargs):
    bench = Ruler(length=length, tasks=list(tasks), num_samples=1, seed=7, cache_samples=False, **kwargs)
    return bench, {s.task: s for s in bench.samples(tokenizer)}


@pytest.fixture(scope="module", params=[4096, 8192])
def generated(request, tokenizer):
    return request.param, *_one_per_task(tokenizer, request.param)


def test_samples_fill_the_target_length_within_two_percent(generated, tokenizer):
    length, bench, samples = generated
    assert set(samples) == set(SYNTHETIC)
    for task, sample in samples.items():
        ids = bench.encode(sample, tokenizer, max_input_tokens=10**9)
        total = len(ids) + sample.max_new_tokens  # RULER's accounting: prompt + generation <= max_seq_length
        assert 0.98 * length <= total <= length, (task, total)
        assert len(ids) == sample.extra["prompt_tokens"]
        assert sample.extra["fit_within_tolerance"] is True


def test_niah_needles_and_values_occur_exactly_once(generated):
    _, _, samples = generated
    for task in [t for t in SYNTHETIC if t.startswith("niah")]:
        sample, args = samples[task], TASKS[task]["args"]
        text, extra = sample.context, sample.extra
        type_v = args["type_needle_v"]
        assert len(extra["keys"]) == max(args["num_needle_k"], args["num_needle_q"])
        for key, values in zip(extra["keys"], extra["values"]):
            assert len(values) == args["num_needle_v"]
            # the key is in exactly num_needle_v needle sentences (queried or distractor key alike)
            assert text.count(f" for {key} is: ") == args["num_needle_v"], (task, key)
            for value in values:
                assert text.count(value) == 1, (task, value)
                assert text.count(f"One of the special magic {type_v} for {key} is: {value}.") == 1
        assert len(extra["queries"]) == args["num_needle_q"]
        assert len(sample.answers) == args["num_needle_q"] * args["num_needle_v"]
        queried = {k: v for k, v in zip(extra["keys"], extra["values"]) if k in extra["queries"]}
        assert sorted(sample.answers) == sorted(v for vs in queried.values() for v in vs)
        question = text.rsplit("\n", 1)[-1]
        assert all(q in question for q in extra["queries"])
        if args["type_haystack"] == "needle":
            needles = re.findall(r"One of the special magic \w+ for .+? is: .+?\.", text)
            assert len(needles) == extra["haystack_size"] + 1


def test_niah_single_answers_are_phrased_in_the_singular(generated):
    _, _, samples = generated
    assert samples["niah_single_1"].context.startswith("A special magic number is hidden")
    assert samples["niah_single_1"].extra["answer_prefix"].endswith("mentioned in the provided text is")
    assert samples["niah_multivalue"].context.startswith("Some special magic numbers are hidden")
    assert samples["niah_single_3"].context.startswith("A special magic uuid is hidden")


def test_vt_chain_is_hidden_once_after_one_answered_example(generated):
    _, _, samples = generated
    sample = samples["vt"]
    text, value, names = sample.context, sample.extra["value"], sample.answers
    assert len(names) == 5 and len(set(names)) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    assert text.count(value) == 2  # "VAR A = value" once, and the question
    assert text.count(f"VAR {names[0]} = {value}") == 1
    for previous, name in zip(names, names[1:]):
        assert text.count(f"VAR {name} = VAR {previous} ") == 1
    for name in names:
        assert text.count(f"VAR {name} =") == 1
    # the in-context example: a 3-letter chain, answered, before the real question
    example, question = text.split("\n\nMemorize and track", 1)
    assert example.startswith("Memorize and track") and re.search(
        r"they are:  ?([A-Z]{3} ){4}[A-Z]{3}$", example
    )
    assert f"assigned the value {value} in the text above." in question


def _numbered_words(listing: str) -> list[str]:
    return [w.strip() for w in re.split(r"(?:^| )\d+\. ", listing) if w.strip()]


def test_cwe_common_words_occur_freq_cw_times_and_the_others_freq_ucw_times(generated):
    _, _, samples = generated
    sample = samples["cwe"]
    main = sample.context.rsplit("Memorize the ones that appear most often.\n", 1)[1].split("\nQuestion:")[0]
    counts = Counter(_numbered_words(main))
    assert len(sample.answers) == 10
    assert all(counts[w] == 30 for w in sample.answers)
    others = {w: c for w, c in counts.items() if w not in sample.answers}
    assert others and set(others.values()) == {3}
    assert len(counts) == sample.extra["num_words"]
    # the few-shot example uses other words
    example = sample.context.split("\nBelow is a numbered list", 1)[0]
    assert not set(_numbered_words(example.split("\n", 1)[1].split("\nQuestion:")[0])) & set(counts)


def test_fwe_answers_are_the_three_most_frequent_coded_words_with_zipf_counts(generated):
    _, _, samples = generated
    sample = samples["fwe"]
    coded = sample.context.split("Find the three most frequently appeared coded words. ", 1)[1].split(
        "\nQuestion:"
    )[0]
    counts = Counter(coded.split(" "))
    assert [counts[w] for w in sample.answers] == sample.extra["answer_counts"]
    ranked = [w for w, _ in counts.most_common() if w != "..."]
    assert ranked[:3] == sample.answers
    assert counts["..."] == sample.extra["noise_count"] == max(counts.values())
    total = sum(counts.values())
    vocab_size = (sample.length - sample.max_new_tokens) // 50
    assert [counts[w] for w in sample.answers] == fwe_counts(sample.extra["haystack_size"], vocab_size, 2.0)[
        1:4
    ]
    assert total == sum(fwe_counts(sample.extra["haystack_size"], vocab_size, 2.0))


def test_zeta_matches_known_values():
    assert zeta(2.0) == pytest.approx(1.6449340668482264, rel=1e-15)
    assert zeta(3.0) == pytest.approx(1.2020569031595942, rel=1e-12)
    assert zeta(1.5) == pytest.approx(2.6123753486854883, rel=1e-12)


def test_qa_tasks_read_squad_and_hotpotqa_files_in_the_official_schema(tokenizer, ruler_qa_dir):
    bench = Ruler(length=4096, tasks=["qa_1", "qa_2"], num_samples=3, qa_data_dir=str(ruler_qa_dir))
    samples = list(bench.samples(tokenizer))
    assert [s.task for s in samples] == ["qa_1"] * 3 + ["qa_2"] * 3
    squad = samples[:3]
    # questions in file order, the unanswerable one ("Who gave their name to Paris?") left out
    assert "Question: In what country is Normandy located?" in squad[0].context
    assert squad[0].answers == ["France"] and squad[1].answers == ["Rollo", "Rollo"]
    assert all("Who gave their name to Paris?" not in s.context for s in squad)
    assert samples[3].answers == ["Paris"]
    for sample in samples:
        assert sample.context.startswith("Answer the question based on the given documents.")
        assert "Document 1:\n" in sample.context
        total = len(bench.encode(sample, tokenizer, 10**9)) + sample.max_new_tokens
        assert 0.98 * 4096 <= total <= 4096
        assert sample.max_new_tokens == 32
        assert bench.score(sample, f"The answer is {sample.answers[0].upper()}.") == 100.0


def test_qa_without_data_is_skipped_with_one_clear_message(tokenizer, caplog):
    bench = Ruler(length=1024, tasks=["qa_1", "niah_single_1"], num_samples=1)
    with caplog.at_level(logging.WARNING):
        assert bench.available_tasks() == ["niah_single_1"]
        tasks = [s.task for s in bench.samples(tokenizer)]
    assert tasks == ["niah_single_1"]
    messages = [r.getMessage() for r in caplog.records if "qa_1" in r.getMessage()]
    assert (
        len(messages) == 1 and "scripts/download_ruler_qa.py" in messages[0] and "qa_data_dir" in messages[0]
    )


def test_same_seed_gives_byte_identical_prompts_and_another_seed_does_not(tokenizer):
    tasks = ["niah_single_2", "niah_multikey_2", "vt", "cwe", "fwe"]

    def prompts(seed):
        bench = Ruler(length=2048, tasks=tasks, num_samples=2, seed=seed, cache_samples=False)
        return [
            (s.id, tokenizer.decode(bench.encode(s, tokenizer, 10**9)), s.answers)
            for s in bench.samples(tokenizer)
        ]

    first, second, other = prompts(3), prompts(3), prompts(4)
    assert first == second
    assert [p[0] for p in first] == [p[0] for p in other]
    assert all(a[1] != b[1] for a, b in zip(first, other))
    assert first[0][1].encode("utf-8") == second[0][1].encode("utf-8")


def test_string_match_all_is_the_mean_share_of_references_found():
    preds = ["The numbers are 123 and 456.", "nothing here", "ABC-def"]
    refs = [["123", "456", "789"], ["1"], ["abc-DEF"]]
    # (2/3 + 0 + 1) / 3 * 100 = 55.555... -> 55.56 ; matching is case-insensitive
    assert string_match_all(preds, refs) == 55.56
    assert string_match_all(["7 and 8"], [["7", "8"]]) == 100.0


def test_string_match_part_counts_a_sample_when_any_reference_is_found():
    # sample 1: "paris" found -> 1 ; sample 2: none -> 0 ; -> 50.0
    assert string_match_part(["It is PARIS.", "no"], [["London", "Paris"], ["yes"]]) == 50.0
    assert string_match_part(["x"], [["x", "y"]]) == 100.0


def test_postprocess_turns_control_characters_into_newlines_and_strips():
    assert postprocess_pred("  \n 123\x00456\tend \n") == "123\n456\nend"


def test_sample_scores_use_the_tasks_metric(tokenizer):
    bench, samples = _one_per_task(tokenizer, 1024, tasks=["niah_multivalue", "vt"])
    multivalue = samples["niah_multivalue"]
    half = " ".join(multivalue.answers[:2])
    assert bench.score(multivalue, bench.postprocess(multivalue, f" {half} ")) == 50.0
    assert bench.score(samples["vt"], " ".join(samples["vt"].answers)) == 100.0


def test_bad_configurations_say_what_is_allowed():
    with pytest.raises(BenchmarkConfigError) as info:
        Ruler(tasks=["niah_single_1", "niah_single_4"])
    assert "'niah_single_4'" in str(info.value) and "qa_2" in str(info.value)
    with pytest.raises(BenchmarkConfigError, match="16384 .* context window of 8192"):
        Ruler(length=16384).validate(8192)
    with pytest.raises(BenchmarkConfigError, match="8320 tokens"):
        Ruler(length=8192, include_generation=False).validate(8192)
    Ruler(length=8192).validate(8192)
    with pytest.raises(BenchmarkConfigError, match="at least"):
        Ruler(length=100)


def test_paper_tasks_are_the_eleven_synthetic_ones():
    assert len(ALL_TASKS) == 13 and len(PAPER_TASKS) == 11 and "qa_1" not in PAPER_TASKS


def test_hub_rows_convert_to_the_official_squad_and_hotpotqa_schemas():
    from qpruning.benchmarks.ruler import qa

    squad_rows = [
        {
            "id": "1",
            "title": "T",
            "context": "Para A.",
            "question": "Q1?",
            "answers": {"text": ["A"], "answer_start": [5]},
        },
        {
            "id": "2",
            "title": "T",
            "context": "Para A.",
            "question": "Q2?",
            "answers": {"text": [], "answer_start": []},
        },
        {
            "id": "3",
            "title": "T",
            "context": "Para B.",
            "question": "Q3?",
            "answers": {"text": ["B"], "answer_start": [5]},
        },
    ]
    official = qa._squad_rows_to_official(squad_rows)
    assert official["data"][0]["paragraphs"][0]["qas"][1]["is_impossible"] is True
    hotpot_rows = [
        {
            "id": "h",
            "question": "Q?",
            "answer": "A",
            "context": {"title": ["T1", "T2"], "sentences": [["S1.", " S2."], ["S3."]]},
        }
    ]
    assert qa._hotpot_rows_to_official(hotpot_rows)[0]["context"] == [
        ["T1", ["S1.", " S2."]],
        ["T2", ["S3."]],
    ]


def test_generated_samples_are_cached_on_disk_and_read_back(tokenizer, isolated_cache, monkeypatch):
    first = Ruler(length=1024, tasks=["niah_single_1", "vt"], num_samples=2, seed=5)
    generated = list(first.samples(tokenizer))
    files = sorted((isolated_cache / "ruler_samples").glob("*.jsonl"))
    assert [f.name.split("-")[0] for f in files] == ["niah_single_1", "vt"]

    def no_generation(*args, **kwargs):
        raise AssertionError("should have been read from the cache")

    again = Ruler(length=1024, tasks=["niah_single_1", "vt"], num_samples=2, seed=5)
    monkeypatch.setattr(again, "task_samples", no_generation)
    assert list(again.samples(tokenizer)) == generated
    other_seed = Ruler(length=1024, tasks=["vt"], num_samples=2, seed=6)
    assert other_seed.cache_path("vt", tokenizer) != first.cache_path("vt", tokenizer)
    assert Ruler(length=1024, tasks=["vt"], num_samples=2, seed=5, chat_template=False).cache_path(
        "vt", tokenizer
    ) != first.cache_path("vt", tokenizer)


def test_a_sample_that_cannot_be_generated_is_kept_and_fails_with_its_reason(tokenizer):
    # cwe at 256k tokens needs more distinct words than wonderwords has: the sample is yielded, marked, and
    # encode() raises SampleError with the reason, so the runner records it as failed and goes on.
    from qpruning.benchmarks import SampleError

    bench = Ruler(length=262144, tasks=["cwe"], num_samples=1, cache_samples=False)
    (sample,) = list(bench.samples(tokenizer))
    assert sample.id == "cwe-262144-0" and sample.answers == []
    with pytest.raises(SampleError, match="distinct words"):
        bench.encode(sample, tokenizer, 10**9)
