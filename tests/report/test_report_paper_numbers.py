"""The paper's numbers in results/paper: counts, cells typed again by hand, and every cell against the text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qpruning.report.paper import PAPER_FILES, load_paper, paper_budget_points

PAPER_TEXT = Path(__file__).resolve().parents[3] / "shared" / "paper" / "more-tokens-lower-precision.txt"


def _cell(df, **where):
    mask = True
    for key, value in where.items():
        mask = mask & (df[key] == value)
    rows = df[mask]
    assert len(rows) == 1, (where, len(rows))
    return float(rows.iloc[0]["value"])


def test_every_file_loads_with_its_row_count(paper):
    counts = {name: len(paper.get(name)) for name in PAPER_FILES}
    assert counts == {"table1": 144, "table2": 42, "table3": 12, "table4": 18, "text": 25}


def test_table1_grid_is_complete_and_unique(paper):
    t1 = paper.get("table1")
    assert set(t1["benchmark"]) == {"longbench", "niah"}
    assert set(t1["pruner"]) == {"streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv"}
    assert set(t1["tokens"]) == {128, 512, 2048} and set(t1["bits"]) == {16, 8, 4, 2}
    assert not t1.duplicated(["benchmark", "pruner", "tokens", "bits"]).any()
    # the caption: KIVI except Ada-KV and HeadKV (FlexGen); 16-bit is not quantized
    quantized = t1[t1["bits"] < 16]
    assert set(quantized[quantized["pruner"].isin(["adakv", "headkv"])]["quant"]) == {"flexgen"}
    assert set(quantized[~quantized["pruner"].isin(["adakv", "headkv"])]["quant"]) == {"kivi"}
    assert t1[t1["bits"] == 16]["quant"].isna().all()
    assert (t1["paper_mark"] == "underline").sum() == 21


@pytest.mark.parametrize(
    ("benchmark", "pruner", "tokens", "bits", "value"),
    [
        ("longbench", "streamingllm", 128, 16, 32.1),
        ("longbench", "pyramidkv", 512, 16, 40.3),
        ("longbench", "pyramidkv", 2048, 4, 41.3),
        ("longbench", "snapkv", 512, 4, 39.7),
        ("longbench", "headkv", 2048, 2, 13.4),
        ("niah", "h2o", 512, 2, 54.8),
        ("niah", "adakv", 128, 8, 88.2),
        ("niah", "headkv", 512, 4, 99.7),
        ("niah", "pyramidkv", 2048, 2, 79.6),
    ],
)
def test_table1_cells_typed_again_by_hand(paper, benchmark, pruner, tokens, bits, value):
    assert _cell(paper.get("table1"), benchmark=benchmark, pruner=pruner, tokens=tokens, bits=bits) == value


def test_table2_cells_and_shape(paper):
    t2 = paper.get("table2")
    assert t2.groupby(["model", "bits"]).size().eq(7).all() and len(t2) == 6 * 7
    assert _cell(t2, model="llama3_8b_instruct", bits=16, benchmark="ruler") == 67.5
    assert _cell(t2, model="llama3_8b_instruct", bits=4, benchmark="ruler") == 82.2
    assert _cell(t2, model="mistral_7b_instruct_v02", bits=16, category="synthetic") == 41.75
    assert _cell(t2, model="mistral_7b_instruct_v02", bits=4, category="multi_doc_qa") == 28.14
    assert _cell(t2, model="llama3_8b_instruct", bits=8, category="code") == 58.0
    assert set(t2["budget"]) == {0.0625} and set(t2["pruner"]) == {"pyramidkv"}


def test_table3_and_table4_cells(paper):
    t3 = paper.get("table3")
    assert _cell(t3, model="llama3_8b_instruct", pruner="snapkv", group_size=32) == 40.4
    assert _cell(t3, model="mistral_7b_instruct_v02", pruner="pyramidkv", group_size=64) == 40.5
    assert set(t3["tokens"]) == {512} and set(t3["bits"]) == {4} and set(t3["quant"]) == {"kivi"}
    t4 = paper.get("table4")
    assert _cell(t4, tokens=128, bits=16, metric="tokens_per_s", batch=96) == 1460.1
    assert _cell(t4, tokens=512, bits=4, metric="tokens_per_s", batch=128) == 1482.8
    assert _cell(t4, tokens=256, bits=8, metric="kv_memory_per_item") == 19.1
    assert _cell(t4, tokens=512, bits=4, metric="niah_avg") == 93.28
    assert set(t4["device"]) == {"NVIDIA A100"} and set(t4["pruner"]) == {"snapkv"}


def test_text_headlines_agree_with_the_tables(paper):
    text = paper.get("text").set_index("key")
    t1, t2 = paper.get("table1"), paper.get("table2")
    assert text.loc["ruler8k_llama3_1x16", "value"] == _cell(
        t2, model="llama3_8b_instruct", bits=16, benchmark="ruler"
    )
    assert text.loc["ruler8k_llama3_4x4", "value"] == 82.2
    assert text.loc["longbench_llama3_1x16", "value"] == _cell(
        t1, benchmark="longbench", pruner="pyramidkv", tokens=512, bits=16
    )
    assert text.loc["longbench_llama3_4x4", "value"] == 41.3
    assert text.loc["code_best_llama3", "value"] == 58
    assert set(text["kind"]) == {"text", "table"}


def _numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", re.sub(r"</?u>", "", line))]


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason="the paper's text is not next to this checkout")
def test_every_table_cell_matches_the_papers_text(paper):
    lines = PAPER_TEXT.read_text(encoding="utf-8").splitlines()
    names = {
        "streamingllm": "StreamingLLM",
        "h2o": "H2O",
        "snapkv": "SnapKV",
        "pyramidkv": "PyramidKV",
        "adakv": "Ada-KV",
        "headkv": "HeadKV",
    }
    blocks = {"longbench": [], "niah": []}
    for line in lines:
        head = line.split("\t")[0]
        if head in names.values():
            blocks["longbench" if len(blocks["longbench"]) < 6 else "niah"].append(line)
    t1 = paper.get("table1")
    for benchmark, block in blocks.items():
        for line in block:
            pruner = next(k for k, v in names.items() if v == line.split("\t")[0])
            printed = _numbers(line.split("\t", 1)[1])
            ours = [
                _cell(t1, benchmark=benchmark, pruner=pruner, tokens=t, bits=b)
                for t in (128, 512, 2048)
                for b in (16, 8, 4, 2)
            ]
            assert ours == printed, (benchmark, pruner)
    t2 = paper.get("table2")
    rows = [
        line
        for line in lines
        if re.match(r"^(Llama-3-8B-Instruct|Mistral-7B-Instruct-v0.2)?\t(512|1024|2048)\t", line)
    ]
    assert len(rows) == 6
    for index, line in enumerate(rows):
        model = "llama3_8b_instruct" if index < 3 else "mistral_7b_instruct_v02"
        tokens, bits, *values = _numbers(
            "\t".join(line.split("\t")[1:])
        )  # the first field is the model or empty
        assert tokens == (512, 1024, 2048)[index % 3]
        columns = ["single_doc_qa", "multi_doc_qa", "summarization", "few_shot", "synthetic", "code"]
        typed = [_cell(t2, model=model, bits=bits, category=c) for c in columns]
        typed.append(_cell(t2, model=model, bits=bits, benchmark="ruler"))
        assert typed == values, line
    t4 = paper.get("table4")
    for line in lines:
        match = re.match(r"^(128|256|512) tokens, (16|8|4)-bit\t", line)
        if match:
            tokens, bits = int(match.group(1)), int(match.group(2))
            printed = _numbers(line.split("\t", 1)[1])
            typed = [_cell(t4, tokens=tokens, metric="tokens_per_s", batch=b) for b in (64, 96, 128)]
            typed += [
                _cell(t4, tokens=tokens, metric=m)
                for m in ("kv_memory_per_item", "longbench_avg", "niah_avg")
            ]
            assert typed == printed, line
            assert bits == int(t4[t4["tokens"] == tokens]["bits"].iloc[0])


def test_paper_budget_points_place_table1_cells_at_their_budget(paper):
    points = paper_budget_points(paper, "llama3_8b_instruct", "longbench", "pyramidkv")
    at = points.set_index(["budget", "bits"])["value"]
    assert at[(1 / 16, 16)] == 40.3 and at[(1 / 16, 4)] == 41.3 and at[(1 / 64, 16)] == 37.4
    assert paper_budget_points(paper, "smollm2_135m", "niah", "snapkv").empty


def test_missing_paper_folder_gives_no_numbers(tmp_path):
    numbers = load_paper(tmp_path / "absent")
    assert not numbers and numbers.get("table1").empty


def test_a_paper_file_without_its_columns_is_an_error(tmp_path):
    (tmp_path / "table1.csv").write_text("model,value\nx,1\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        load_paper(tmp_path)
