"""Tables 1-4: shapes, missing cells shown as missing (never 0), highlighting, paper comparison, writers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from fabricate_runs import RunSpec, write_run

from qpruning.report import collect_runs
from qpruning.report.render import (
    SOURCE_DIFF,
    SOURCE_OURS,
    SOURCE_PAPER,
    ReportTable,
    to_latex,
    to_markdown,
    write_table,
)
from qpruning.report.tables import table1, table2, table3, table4
from qpruning.report.throughput import read_throughput

L3, MI = "llama3_8b_instruct", "mistral_7b_instruct_v02"


def _value(table: ReportTable, row: tuple, col: tuple, field: str = "value"):
    return table.wide(field).loc[row, col]


def test_table1_has_a_block_per_model_and_benchmark_and_the_grid_of_tokens_and_bits(runs, paper):
    t = table1(runs, paper)
    assert t is not None
    assert t.row_order[:4] == [
        (L3, "longbench", "snapkv"),
        (L3, "longbench", "pyramidkv"),
        (L3, "niah", "snapkv"),
        (L3, "niah", "pyramidkv"),
    ]
    assert t.col_order == [(tok, bits) for tok in (128.0, 512.0) for bits in (16.0, 8.0, 4.0, 2.0)]
    assert t.wide().shape == (len(t.row_order), 8)


def test_table1_shows_a_missing_cell_as_missing_never_zero(runs, paper, tmp_path):
    t = table1(runs, paper)
    hole = ((L3, "niah", "pyramidkv"), (512.0, 2.0))
    assert math.isnan(_value(t, *hole))
    assert any("NIAH / PyramidKV / Token=512 2-bit: no run" in m for m in t.missing)
    md = to_markdown(t).splitlines()
    niah_pyramid = [line for line in md if "PyramidKV" in line and "–" in line]
    assert niah_pyramid and niah_pyramid[0].rstrip(" |").endswith("–")
    assert "--" in to_latex(t)
    paths = write_table(t, tmp_path)
    back = pd.read_csv(paths["csv"])
    assert back.isna().sum().sum() >= 1
    assert not (back.select_dtypes("number") == 0).any().any()


def test_table1_uses_the_kept_run_of_a_duplicated_configuration(runs, paper):
    t = table1(runs, paper)
    value = _value(t, (L3, "longbench", "snapkv"), (512.0, 4.0))
    assert value != pytest.approx(12.345)
    assert any("more than once" in n for n in t.notes)


def test_table1_puts_the_papers_cell_and_the_difference_beside_ours(runs, paper):
    t = table1(runs, paper)
    row, col = (L3, "longbench", "pyramidkv"), (512.0, 16.0)
    ours, published = _value(t, row, col), _value(t, row, col, "paper")
    assert published == 40.3
    assert _value(t, row, col, "diff") == pytest.approx(ours - 40.3)
    # Mistral rows have no published Table 1 cell
    assert math.isnan(_value(t, (MI, "longbench", "snapkv"), (512.0, 16.0), "paper"))
    cmp = t.comparison()
    assert cmp is not None and cmp.row_keys[-1] == "source"
    assert [r[-1] for r in cmp.row_order[:3]] == [SOURCE_OURS, SOURCE_PAPER, SOURCE_DIFF]
    assert all(r[0] == L3 for r in cmp.row_order)
    md = to_markdown(cmp)
    assert "| paper |" in md and "| Δ (ours − paper) |" in md
    assert "40.3" in md


def test_table1_without_paper_has_no_comparison(runs):
    t = table1(runs, None)
    assert t.comparison() is None and t.cells["paper"].isna().all()


def test_table1_bolds_the_best_and_underlines_the_second_per_column_and_block(runs, paper):
    t = table1(runs, paper)
    marks = t.marks()
    best = marks[((L3, "longbench", "pyramidkv"), (128.0, 16.0))]
    second = marks[((L3, "longbench", "snapkv"), (128.0, 16.0))]
    assert (best, second) == ("best", "second")
    md = to_markdown(t)
    assert "**" in md and "<ins>" in md
    tex = to_latex(t)
    assert r"\textbf{" in tex and r"\underline{" in tex and r"\midrule" in tex and r"\cmidrule" in tex


def _toy(values: dict[str, float | None]) -> ReportTable:
    cells = pd.DataFrame(
        [
            {
                "pruner": p,
                "bits": 4.0,
                "value": v,
                "samples": 10,
                "n_runs": 1,
                "run_path": "x",
                "paper": math.nan,
                "diff": math.nan,
            }
            for p, v in values.items()
            if v is not None
        ]
    )
    return ReportTable(
        name="toy",
        title="Toy",
        caption="",
        cells=cells,
        row_keys=["pruner"],
        col_keys=["bits"],
        row_order=[(p,) for p in values],
        col_order=[(4.0,)],
        highlight_within=(),
    )


def test_ties_share_the_bold_and_a_single_value_is_not_highlighted():
    marks = _toy({"snapkv": 100.0, "pyramidkv": 100.0, "h2o": 90.0, "adakv": None}).marks()
    assert marks == {
        (("snapkv",), (4.0,)): "best",
        (("pyramidkv",), (4.0,)): "best",
        (("h2o",), (4.0,)): "second",
    }
    assert _toy({"snapkv": 50.0, "h2o": None}).marks() == {}
    md = to_markdown(_toy({"snapkv": 50.0, "h2o": None}))
    assert "| H2O | – |" in md


def test_table2_has_categories_and_ruler_per_model_and_setting(runs, paper):
    t = table2(runs, paper)
    assert t is not None
    assert t.row_order == [
        (L3, 0.0625, 16.0),
        (L3, 0.0625, 8.0),
        (L3, 0.0625, 4.0),
        (MI, 0.0625, 16.0),
        (MI, 0.0625, 8.0),
        (MI, 0.0625, 4.0),
    ]
    assert [c[0] for c in t.col_order] == [
        "tokens",
        "single_doc_qa",
        "multi_doc_qa",
        "summarization",
        "few_shot",
        "synthetic",
        "code",
        "ruler_8k",
    ]
    assert t.n_filled == t.n_layout_cells == 6 * 7
    assert _value(t, (L3, 0.0625, 16.0), ("ruler_8k",), "paper") == 67.5
    assert _value(t, (L3, 0.0625, 4.0), ("ruler_8k",), "paper") == 82.2
    # kept tokens are informative, not a score: not highlighted, ours next to the paper's
    assert (
        _value(t, (MI, 0.0625, 16.0), ("tokens",)) == 1024
        and _value(t, (MI, 0.0625, 16.0), ("tokens",), "paper") == 512
    )
    assert not any(c == ("tokens",) for (_r, c) in t.marks())
    assert "RULER-8k" in to_markdown(t) and "SQA" in to_markdown(t)


def test_table2_falls_back_to_the_budgets_that_exist(tmp_path):
    for bits in (16, 8, 4):
        write_run(
            tmp_path / f"r{bits}",
            RunSpec("longbench", pruner="pyramidkv", budget=1 / 64, bits=bits, samples=6),
        )
    t = table2(collect_runs([tmp_path]).runs)
    assert t is not None and t.row_order[0][1] == pytest.approx(1 / 64)
    assert any("No run at the paper's budget" in n for n in t.notes)
    # RULER-8k has no run: a missing column, listed as missing
    assert all(math.isnan(v) for v in t.wide()[("ruler_8k",)])
    assert sum("RULER-8k: no run" in m for m in t.missing) == 3


def test_table3_has_group_sizes_for_rows_with_a_non_default_group(runs, paper):
    t = table3(runs, paper)
    assert t is not None
    assert t.col_order == [(32.0,), (64.0,), (128.0,)]
    assert len(t.row_order) == 4 and t.n_filled == 12
    assert _value(t, (L3, "longbench", "snapkv", 512.0, 4.0), (32.0,), "paper") == 40.4
    assert _value(t, (MI, "longbench", "pyramidkv", 512.0, 4.0), (64.0,), "paper") == 40.5


def test_table4_joins_throughput_files_with_accuracy_and_keeps_the_latest_measurement(
    runs, paper, throughput_file
):
    frame, problems = read_throughput([throughput_file])
    assert not problems
    t = table4(frame, runs, paper)
    assert t is not None
    row = (MI, "snapkv", "NVIDIA H100", 128.0, 16.0)
    assert _value(t, row, ("tokens_per_s", 64.0)) == 640.0  # not the older 100.0
    assert any("repeated" in n for n in t.notes)
    assert _value(t, row, ("kv_mb_per_item", None)) == pytest.approx(18.1)
    assert _value(t, row, ("tokens_per_s", 96.0), "paper") == 1460.1
    assert _value(t, row, ("kv_mb_per_item", None), "paper") == 18.0
    # LongBench average joined from a 512-token 4-bit SnapKV run; none exists for 128 tokens 16-bit
    assert not math.isnan(_value(t, (MI, "snapkv", "NVIDIA H100", 512.0, 4.0), ("longbench_avg", None)))
    assert math.isnan(_value(t, row, ("longbench_avg", None)))
    assert any("128 / 16-bit / LongBench avg: no run" in m for m in t.missing)


def test_table4_reports_a_throughput_file_without_its_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,tokens\nx,1\n")
    frame, problems = read_throughput([bad])
    assert frame.empty and "lacks the columns" in problems[0]
    assert table4(frame) is None


def test_tables_with_no_fitting_runs_are_none(tmp_path):
    # a NIAH demo with one pruner at one budget, 3 settings: no table fits (Table 1 wants tokens, not budgets)
    for bits in (16, 8, 4):
        write_run(
            tmp_path / f"r{bits}",
            RunSpec("niah", model="smollm2_135m", pruner="snapkv", budget=1 / 64, bits=bits, samples=6),
        )
    demo = collect_runs([tmp_path]).runs
    assert len(demo) == 3
    assert table1(demo) is None and table2(demo) is None and table3(demo) is None
    assert table4(pd.DataFrame(), demo) is None
    empty = collect_runs([tmp_path / "nothing"]).runs
    assert table1(empty) is None and table2(empty) is None and table3(empty) is None


def test_write_table_writes_csv_markdown_latex_and_cells(runs, paper, tmp_path):
    t = table1(runs, paper)
    paths = write_table(t, tmp_path)
    assert {p.name for p in paths.values()} == {"table1.csv", "table1.md", "table1.tex", "table1_cells.csv"}
    cells = pd.read_csv(paths["cells"])
    assert {"value", "samples", "run_path", "paper", "diff"} <= set(cells.columns)
    assert (cells["samples"] > 0).all()
    tex = paths["tex"].read_text()
    assert (
        r"\begin{table}" in tex
        and "booktabs" in tex
        and r"\label{tab:table1}" in tex
        and "Llama-3-8B-Instruct" in tex
    )
    assert "Token=128" in paths["md"].read_text()
