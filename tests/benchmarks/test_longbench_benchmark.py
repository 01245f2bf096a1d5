"""LongBench / LongBench-E as benchmarks: data loading (fixtures in the official schema), offline errors,
prompts with and without the chat template, middle truncation, scores and the Table 2 / length aggregates."""

from __future__ import annotations

import time

import pytest

from qpruning.benchmarks import BenchmarkConfigError, DataNotFoundError, LongBench, LongBenchE, SampleError
from qpruning.benchmarks.longbench import DATASET2PROMPT


def test_offline_without_data_fails_at_once_naming_the_files_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bench = LongBench(datasets=["narrativeqa", "trec"])
    start = time.monotonic()
    with pytest.raises(DataNotFoundError) as info:
        next(bench.samples(None))
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "narrativeqa.jsonl" in message and "trec.jsonl" in message
    assert "scripts/download_longbench.py --out DIR" in message and "benchmark.data_dir=DIR" in message


def test_unreachable_hub_is_detected_within_the_timeout_and_never_retried(monkeypatch):
    # No offline variable: the loader probes the hub once, bounded by hub_timeout (a non-routable endpoint).
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1:9")
    bench = LongBench(datasets=["qasper"], hub_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(DataNotFoundError, match="qasper.jsonl"):
        next(bench.samples(None))
    assert time.monotonic() - start < 5


def test_data_dir_missing_files_are_listed(longbench_dir):
    bench = LongBench(datasets=["narrativeqa", "musique", "dureader"], data_dir=str(longbench_dir))
    with pytest.raises(DataNotFoundError) as info:
        next(bench.samples(None))
    assert "musique.jsonl" in str(info.value) and "dureader.jsonl" in str(info.value)
    assert "narrativeqa.jsonl" not in str(info.value)


def test_samples_read_the_official_schema_in_file_order_with_limit(longbench_dir):
    bench = LongBench(datasets=["narrativeqa", "trec"], data_dir=str(longbench_dir), limit=1)
    samples = list(bench.samples(None))
    assert [s.task for s in samples] == ["narrativeqa", "trec"]
    first = samples[0]
    assert first.id == "narrativeqa-fixturenarrativeqa0000"
    assert first.answers == ["Elias Marrow", "Elias"] and first.max_new_tokens == 128
    assert first.extra["category"] == "single_doc_qa" and first.extra["language"] == "en"
    assert samples[1].extra["all_classes"][0] == "Abbreviation"


def test_longbench_e_reads_the_e_files_and_defaults_to_the_papers_seven_datasets(longbench_dir):
    assert LongBenchE().datasets == [
        "multifieldqa_en", "2wikimqa", "gov_report", "trec", "triviaqa", "samsum", "repobench-p",
    ]  # fmt: skip
    bench = LongBenchE(datasets=["multifieldqa_en", "trec"], data_dir=str(longbench_dir))
    samples = list(bench.samples(None))
    assert len(samples) == 9 and samples[0].id.startswith("multifieldqa_en_e-")
    assert [s.length for s in samples[:6]] == [1200, 3999, 4000, 7999, 8000, 12000]


def test_unknown_dataset_names_list_the_valid_ones():
    with pytest.raises(BenchmarkConfigError) as info:
        LongBench(datasets=["narrativeqa", "nq"])
    assert "'nq'" in str(info.value) and "passage_retrieval_zh" in str(info.value)
    with pytest.raises(BenchmarkConfigError, match="valid: qasper"):
        LongBenchE(datasets=["narrativeqa"])  # narrativeqa has no LongBench-E subset


def test_a_window_that_cannot_hold_the_generation_says_so():
    bench = LongBench(datasets=["gov_report"])
    with pytest.raises(BenchmarkConfigError, match="context window of 600 tokens"):
        bench.validate(600)
    bench.validate(8192)


def test_chat_template_is_used_except_for_few_shot_and_code(longbench_dir, tokenizer):
    bench = LongBench(datasets=["narrativeqa", "trec", "lcc"], data_dir=str(longbench_dir), limit=1)
    by_task = {s.task: s for s in bench.samples(None)}
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    qa_ids = bench.encode(by_task["narrativeqa"], tokenizer, 8000)
    assert qa_ids[0] == start and tokenizer.decode(qa_ids).rstrip().endswith("assistant")
    for task in ("trec", "lcc"):
        ids = bench.encode(by_task[task], tokenizer, 8000)
        assert start not in ids
        assert tokenizer.decode(ids) == bench.prompt(by_task[task])
    raw = LongBench(datasets=["narrativeqa"], data_dir=str(longbench_dir), chat_template=False)
    assert start not in raw.encode(by_task["narrativeqa"], tokenizer, 8000)


def test_long_prompts_are_cut_in_the_middle_to_fit_and_keep_both_ends(longbench_dir, tokenizer):
    bench = LongBench(datasets=["narrativeqa"], data_dir=str(longbench_dir), limit=1)
    sample = next(bench.samples(None))
    full = bench.encode(sample, tokenizer, 100_000)
    assert len(full) > 300
    for budget in (300, 301, 150):
        ids = bench.encode(sample, tokenizer, budget)
        assert budget - 4 <= len(ids) <= budget
        text = tokenizer.decode(ids)
        assert "You are given a story" in text  # the instruction at the start survives
        assert "Question: What was the lighthouse keeper called?" in text  # and the question at the end
        assert text.rstrip().endswith("assistant")


def test_max_input_tokens_reserves_the_datasets_generation_length(longbench_dir):
    bench = LongBench(datasets=["narrativeqa", "trec"], data_dir=str(longbench_dir), limit=1)
    qa, trec = list(bench.samples(None))
    assert bench.max_input_tokens(qa, 8192) == 8192 - 128
    assert bench.max_input_tokens(trec, 8192) == 8192 - 64


def test_samsum_stops_at_a_newline_like_pred_py(longbench_dir, tokenizer):
    bench = LongBench(datasets=["samsum", "trec"], data_dir=str(longbench_dir))
    samsum, trec = list(bench.samples(None))
    kwargs = bench.generation_kwargs(samsum, tokenizer)
    assert tokenizer("\n", add_special_tokens=False)["input_ids"][-1] in kwargs["eos_token_id"]
    assert kwargs["max_new_tokens"] == 128 and kwargs["do_sample"] is False
    assert "eos_token_id" not in bench.generation_kwargs(trec, tokenizer)


def test_sample_scores_follow_eval_py(longbench_dir):
    bench = LongBench(
        datasets=["narrativeqa", "trec", "passage_retrieval_en", "passage_count", "lcc", "multifieldqa_zh"],
        data_dir=str(longbench_dir),
        limit=1,
    )
    s = {x.task: x for x in bench.samples(None)}
    # "it was elias marrow" vs "elias marrow": P=2/4, R=1 -> F1=2/3 ; vs "elias": P=1/4, R=1 -> 0.4 ; max 2/3
    assert bench.score(s["narrativeqa"], "It was Elias Marrow.") == pytest.approx(100 * 2 / 3)
    assert bench.score(s["trec"], "\nIndividual\nCity") == 100.0  # first line only
    assert bench.score(s["passage_retrieval_en"], "Paragraph 2") == 100.0
    assert bench.score(s["passage_count"], "2") == 100.0
    assert bench.score(s["lcc"], "```\n    return add(x, 1)") == 100.0
    assert bench.score(s["multifieldqa_zh"], "北京") == 100.0


def test_a_sample_without_answers_is_a_sample_error(longbench_dir):
    bench = LongBench(datasets=["narrativeqa"], data_dir=str(longbench_dir), limit=1)
    sample = next(bench.samples(None))
    sample.answers = []
    with pytest.raises(SampleError, match="no reference"):
        bench.score(sample, "anything")


def test_a_tokenizer_failure_is_a_sample_error(longbench_dir):
    class Broken:
        chat_template = None

        def __call__(self, *args, **kwargs):
            raise UnicodeError("cannot tokenize")

    bench = LongBench(datasets=["narrativeqa"], data_dir=str(longbench_dir), limit=1)
    with pytest.raises(SampleError, match="tokenizer failed"):
        bench.encode(next(bench.samples(None)), Broken(), 1000)


def _record(task, score, length, status="ok"):
    return {"task": task, "score": score, "length": length, "status": status}


def test_aggregate_gives_dataset_category_and_length_scores():
    bench = LongBench(datasets=["narrativeqa", "qasper", "trec", "lcc"])
    records = [
        _record("narrativeqa", 50.0, 1000),
        _record("narrativeqa", 100.0, 5000),
        _record("qasper", 0.0, 9000),
        _record("trec", 80.0, 2000),
        _record("lcc", 40.0, 3000),
        _record("lcc", None, 3000, status="failed"),
    ]
    result = bench.aggregate(records)
    assert result["task_scores"] == {"narrativeqa": 75.0, "qasper": 0.0, "trec": 80.0, "lcc": 40.0}
    assert result["score"] == pytest.approx((75 + 0 + 80 + 40) / 4)
    # single_doc_qa = mean(narrativeqa, qasper) ; few_shot = trec ; code = lcc
    assert result["category_scores"] == {"single_doc_qa": 37.5, "few_shot": 80.0, "code": 40.0}
    # 0-4k: narrativeqa 50, trec 80, lcc 40 -> 56.67 ; 4-8k: narrativeqa 100 ; 8k+: qasper 0
    assert result["length_scores"]["0-4k"] == pytest.approx((50 + 80 + 40) / 3)
    assert result["length_scores"]["4-8k"] == 100.0 and result["length_scores"]["8k+"] == 0.0
    assert result["task_length_scores"]["narrativeqa"] == {"0-4k": 50.0, "4-8k": 100.0}


def test_templates_are_the_official_ones():
    # Spot checks against THUDM/LongBench config/dataset2prompt.json (v1), typo included.
    assert "Answer the question asconcisely as you can" in DATASET2PROMPT["narrativeqa"]
    assert DATASET2PROMPT["lcc"] == "Please complete the code given below. \n{context}Next line of code:\n"
    assert DATASET2PROMPT["trec"].endswith("{context}\n{input}")
    assert DATASET2PROMPT["passage_count"].endswith("The final answer is: ")


def test_hub_download_falls_back_to_the_repository_zip(monkeypatch, tmp_path, longbench_dir):
    import zipfile

    import huggingface_hub

    from qpruning.benchmarks.longbench import data as lb_data

    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(longbench_dir / "trec.jsonl", "data/trec.jsonl")
        zf.write(longbench_dir / "trec_e.jsonl", "data/trec_e.jsonl")

    def no_script(*args, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported")

    monkeypatch.setattr(lb_data, "_download_with_datasets", no_script)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(archive))
    written = lb_data.download(["trec", "lcc"], e=False, out_dir=tmp_path / "out")
    assert list(written) == ["trec"]  # lcc is not in this zip
    assert lb_data.read_jsonl(written["trec"])[0]["answers"] == ["Individual"]


def test_reachable_hub_fills_the_cache_once_and_samples_follow(monkeypatch, longbench_dir, isolated_cache):
    import shutil

    from qpruning.benchmarks.longbench import data as lb_data

    calls = []

    def fake_download(datasets, e=False, out_dir=None):
        calls.append(list(datasets))
        out_dir.mkdir(parents=True, exist_ok=True)
        return {d: shutil.copy(longbench_dir / lb_data.file_name(d, e), out_dir) for d in datasets}

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(lb_data, "hub_reachable", lambda timeout, repo=None: True)
    monkeypatch.setattr(lb_data, "download", fake_download)
    bench = LongBench(datasets=["trec", "lcc"])
    assert [s.task for s in bench.samples(None)] == ["trec", "lcc"]
    assert [s.task for s in bench.samples(None)] == ["trec", "lcc"]  # second time: from the cache
    assert calls == [["trec", "lcc"]]
    assert (isolated_cache / "longbench" / "trec.jsonl").is_file()
