"""The SmolLM2 sweeps: Figure 2 with intervals and both compat modes, the compat_modes and rotation tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from fabricate_runs import RunSpec, smollm2_sweep, write_run

from qpruning.report import build_report, collect_runs, labels
from qpruning.report.figures import figure2_budget, niah_heatmaps
from qpruning.report.render import to_latex, to_markdown
from qpruning.report.selection import pick_runs
from qpruning.report.tables import compat_modes, rotation

BUDGETS = (1 / 64, 1 / 32, 1 / 16)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """Both compat modes on Figure 2's grid (NIAH under a custom name, the RULER subset) and KIVI vs kivi_rot."""
    root = tmp_path_factory.mktemp("smollm2")
    smollm2_sweep(root / "runs", budgets=BUDGETS, niah="niah_fig2")
    return root, collect_runs([root / "runs"]).runs


@pytest.fixture(scope="module")
def one_mode(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_mode")
    smollm2_sweep(root / "runs", compat=("methods",), budgets=BUDGETS, rotation=False)
    return root, collect_runs([root / "runs"]).runs


def _score(runs: pd.DataFrame, **key) -> float:
    match = runs
    for name, value in key.items():
        match = match[match[name].isna()] if value is None else match[match[name] == value]
    assert len(match) == 1, key
    return float(match["score"].iloc[0])


def test_figure2_draws_each_mode_with_intervals_around_every_point(smollm2):
    root, runs = smollm2
    result = figure2_budget(runs, root / "out")
    assert result is not None and result.panels == 2 * 2 * 2  # benchmarks x pruners x modes
    data = result.data
    assert set(data["compat"]) == {"methods", "paper"} and set(data["benchmark"]) == {
        "niah_fig2",
        "ruler_small",
    }
    assert set(data["setting"]) == {"1x16", "2x8", "4x4"}  # the rotation sweep's 8x2 runs are not Figure 2's
    assert set(data["quant"]) == {"kivi"}
    assert ((data["ci_low"] <= data["value"] + 1e-9) & (data["value"] <= data["ci_high"] + 1e-9)).all()
    assert (data["ci_low"] < data["ci_high"]).any()
    assert dict(zip(data["benchmark"], data["n"])) == {"niah_fig2": 25, "ruler_small": 16}
    assert "compat" in result.caption.lower() and "bootstrap" in result.caption
    back = pd.read_csv(result.data_path)
    assert {"ci_low", "ci_high", "n", "compat"} <= set(back.columns)
    points = result.extra_files["points md"].read_text()
    assert "ci_low" in points and "paper's code" in points and "NIAH (fig2)" in points
    ordering = pd.read_csv(result.extra_files["ordering csv"])
    assert len(ordering) == 2 * 2 * 2 * len(BUDGETS)  # every budget of the grid is <= 1/16
    assert set(ordering["holds"]) <= {True, False}
    assert "4x4 >= 2x8 >= 1x16 at budgets <= 1/16" in result.extra_files["ordering md"].read_text()
    assert any("4x4 >= 2x8 >= 1x16" in line for line in result.details)


def test_figure2_ordering_follows_the_scores(smollm2):
    root, runs = smollm2
    result = figure2_budget(runs, root / "out")
    ordering = pd.read_csv(result.extra_files["ordering csv"])
    for _, row in ordering.iterrows():
        expected = row["4x4"] >= row["2x8"] >= row["1x16"]
        assert bool(row["holds"]) == expected
        for setting, bits in (("4x4", 4), ("2x8", 8), ("1x16", 16)):
            key = dict(benchmark=row["benchmark"], pruner=row["pruner"], compat=row["compat"], quant="kivi")
            assert row[setting] == _score(runs, **key, budget=row["budget"], bits=bits)


def test_figure2_with_one_mode_has_no_mode_panels(one_mode):
    root, runs = one_mode
    result = figure2_budget(runs, root / "out")
    assert result.panels == 4 and set(result.data["compat"]) == {"methods"}
    assert "Compat modes" not in result.caption


def test_niah_heatmaps_one_per_mode_when_both_exist(smollm2, one_mode):
    root, runs = smollm2
    names = {r.name: r for r in niah_heatmaps(runs, root / "heatmaps")}
    assert {n for n in names if "snapkv" in n} == {
        "niah_smollm2_135m_snapkv_niah_fig2_budget_methods",
        "niah_smollm2_135m_snapkv_niah_fig2_budget_paper",
    }
    paper = names["niah_smollm2_135m_snapkv_niah_fig2_budget_paper"]
    assert set(paper.data["compat"]) == {"paper"} and "compat: paper's code" in paper.title
    root, runs = one_mode
    assert {r.name for r in niah_heatmaps(runs, root / "heatmaps")} == {
        "niah_smollm2_135m_snapkv_budget",
        "niah_smollm2_135m_pyramidkv_budget",
    }


def test_compat_modes_table_holds_each_modes_run_score_and_their_difference(smollm2):
    _, runs = smollm2
    table = compat_modes(runs)
    assert table is not None and table.name == "compat_modes"
    assert table.col_order == [("methods",), ("paper",), ("diff",)]
    assert len(table.row_order) == 2 * 2 * len(BUDGETS) * 3  # benchmarks x pruners x budgets x settings
    wide = table.wide()
    assert set(table.row_keys) >= {"benchmark", "pruner", "budget", "bits"}
    for row in table.row_order:
        key = dict(zip(table.row_keys, row))
        fields = {
            k: v for k, v in key.items() if k in ("benchmark", "pruner", "budget", "bits", "benchmark_length")
        }
        methods = _score(runs, **fields, quant="kivi", compat="methods")
        paper = _score(runs, **fields, quant="kivi", compat="paper")
        assert wide.loc[row, ("methods",)] == pytest.approx(methods)
        assert wide.loc[row, ("paper",)] == pytest.approx(paper)
        assert wide.loc[row, ("diff",)] == pytest.approx(paper - methods)
    md = to_markdown(table)
    assert "compat=methods" in md and "Δ (paper − methods)" in md and "4x4" in md
    assert r"\begin{tabular}" in to_latex(table)


def test_no_compat_table_with_one_mode_or_unpaired_modes(one_mode, tmp_path):
    _, runs = one_mode
    assert compat_modes(runs) is None
    write_run(tmp_path / "a", RunSpec("niah", model="smollm2_135m", budget=1 / 32, bits=4, compat="methods"))
    write_run(tmp_path / "b", RunSpec("niah", model="smollm2_135m", budget=1 / 16, bits=4, compat="paper"))
    assert compat_modes(collect_runs([tmp_path]).runs) is None  # both modes, never the same configuration


def test_rotation_table_pairs_each_rotated_run_with_its_unrotated_twin(smollm2):
    _, runs = smollm2
    table = rotation(runs)
    assert table is not None and table.name == "rotation"
    assert [dict(zip(table.row_keys, r))["bits"] for r in table.row_order] == [16.0, 8.0, 4.0, 2.0] * 2
    assert {dict(zip(table.row_keys, r))["budget"] for r in table.row_order} == {1 / 32, 1 / 16}
    benches = {"NIAH (fig2)": "niah_fig2", "RULER-4k (small)": "ruler_small"}
    assert table.col_order == [(b, v) for b in benches for v in ("plain", "rotated", "diff")]
    wide = table.wide()
    for row in table.row_order:
        key = dict(zip(table.row_keys, row))
        assert key["quant"] == "kivi" and key["pruner"] == "snapkv"
        for label, bench in benches.items():
            fields = dict(
                benchmark=bench, pruner="snapkv", budget=key["budget"], bits=key["bits"], compat="methods"
            )
            plain, rotated = _score(runs, **fields, quant="kivi"), _score(runs, **fields, quant="kivi_rot")
            assert wide.loc[row, (label, "plain")] == pytest.approx(plain)
            assert wide.loc[row, (label, "rotated")] == pytest.approx(rotated)
            assert wide.loc[row, (label, "diff")] == pytest.approx(rotated - plain)
    assert "KIVI" in to_markdown(table) and "8x2" in to_markdown(table)


def test_rotation_table_needs_a_rotated_run(one_mode, tmp_path):
    _, runs = one_mode
    assert rotation(runs) is None
    for quant, bits in (("kivi", 16), ("kivi", 4), ("flexgen_rot", 4), ("flexgen", 4)):
        write_run(
            tmp_path / f"{quant}{bits}",
            RunSpec("niah", model="smollm2_135m", quant=quant, tokens=128, bits=bits),
        )
    table = rotation(collect_runs([tmp_path]).runs)
    # FlexGen's rotated run pairs with FlexGen, not with KIVI; KIVI has no rotated run: no KIVI rows
    assert [dict(zip(table.row_keys, r))["quant"] for r in table.row_order] == ["flexgen"]
    assert "tokens" in table.row_keys and "budget" not in table.row_keys
    assert table.wide().loc[table.row_order[0], ("NIAH", "diff")] == pytest.approx(
        table.wide().loc[table.row_order[0], ("NIAH", "rotated")]
        - table.wide().loc[table.row_order[0], ("NIAH", "plain")]
    )


def test_rotated_quantizers_are_labelled_and_never_fill_figure2s_16bit_points(tmp_path):
    assert labels.quant_label("kivi_rot") == "KIVI+rotation"
    assert labels.quant_label("flexgen_rot") == "FlexGen+rotation"
    assert labels.rotated_base("kivi_rot") == "kivi" and labels.rotated_base("kivi") is None
    assert labels.rotated_base("_rot") is None
    write_run(tmp_path / "plain", RunSpec("niah", model="smollm2_135m", budget=1 / 32, bits=16), mtime=1e9)
    write_run(
        tmp_path / "rot", RunSpec("niah", model="smollm2_135m", quant="kivi_rot", budget=1 / 32, bits=16)
    )
    runs = collect_runs([tmp_path]).runs
    [picked] = pick_runs(runs, ["budget", "bits"])["quant"]
    assert picked == "kivi"  # the older run, under the paper's quantizer's name


def test_the_report_indexes_the_new_tables_and_figure2s_files(smollm2):
    root, _ = smollm2
    report = build_report([root / "runs"], root / "report", use_paper=False)
    index = report.index.read_text()
    for anchor in ("compat_modes", "rotation", "fig2_budget"):
        assert f'<a id="{anchor}"></a>' in index
    for name in (
        "fig2_budget.md",
        "fig2_ordering.csv",
        "fig2_ordering.md",
        "compat_modes.tex",
        "rotation.csv",
    ):
        assert (root / "report" / name).is_file() and f"({name})" in index
    assert "4x4 >= 2x8 >= 1x16" in index
    assert not math.isnan(report.tables["rotation"].wide().iloc[0, 0])
