"""The report's tiers table: precision per token beside one precision at the same budget, with the scores' bootstrap
intervals and a verdict against the best uniform point; tiered runs stay out of the paper's tables and figures."""

from __future__ import annotations

import pytest
from fabricate_runs import RunSpec, write_run

from qpruning.report import build_report, collect_runs
from qpruning.report.selection import budget_runs
from qpruning.report.tables import _tier_verdicts, tiers
from qpruning.report.uncertainty import run_interval

TIERS = "0.2x8+0.4x4+0.4x2"


def sweep(tmp_path, tier_score=90.0):
    for bits, score in ((16, 30.0), (8, 50.0), (4, 70.0)):
        write_run(tmp_path / f"u{bits}", RunSpec("niah", model="smollm2_135m", budget=1 / 16, bits=bits, samples=40,
                                                  score=score, score_from_samples=True))
    write_run(tmp_path / "t", RunSpec("niah", model="smollm2_135m", budget=1 / 16, bits=4, tiers=TIERS, samples=40,
                                      score=tier_score, score_from_samples=True))
    write_run(tmp_path / "other", RunSpec("niah", model="smollm2_135m", budget=1 / 32, bits=4, samples=40))
    return collect_runs([tmp_path]).runs


def test_the_tiers_table_puts_each_tiering_beside_the_uniform_points_of_its_budget(tmp_path):
    runs = sweep(tmp_path)
    table = tiers(runs)
    wide = table.wide()
    rows = {dict(zip(table.row_keys, r))["precision"]: r for r in table.row_order}
    assert sorted(rows) == ["1x16", "2x8", "4x4", f"tiers {TIERS}"]  # 1/32 has no tiered run: not shown
    folders = {"1x16": "u16", "2x8": "u8", "4x4": "u4", f"tiers {TIERS}": "t"}
    for name, row in rows.items():
        run = runs[runs["run_dir"] == str(tmp_path / folders[name])]
        interval = run_interval(run.iloc[0]["run_dir"])
        assert wide.loc[row, ("NIAH", "score")] == pytest.approx(float(run.iloc[0]["score"]))
        assert wide.loc[row, ("NIAH", "low")] == pytest.approx(interval.low)
        assert wide.loc[row, ("NIAH", "high")] == pytest.approx(interval.high)
        assert interval.low <= wide.loc[row, ("NIAH", "score")] <= interval.high
    assert any(f"tiers {TIERS}" in note and "best uniform point 4x4" in note for note in table.notes)


def test_tiered_runs_stay_out_of_the_paper_tables_and_figures(tmp_path):
    runs = sweep(tmp_path)
    assert runs["tiers"].notna().sum() == 1 and budget_runs(runs)["tiers"].isna().all()
    report = build_report([tmp_path], tmp_path / "report", use_paper=False)
    assert report.tables["tiers"] is not None and (tmp_path / "report" / "tiers.md").exists()
    figure2 = (tmp_path / "report" / "fig2_budget.csv").read_text()
    assert f"{tmp_path}/u4" in figure2 and f"{tmp_path}/t\n" not in figure2 and f"{tmp_path}/t," not in figure2


def test_tier_verdicts_compare_with_the_best_uniform_point_and_its_interval():
    found = {
        (("m", 0.0625, "1x16"), "NIAH"): (50.0, 40.0, 60.0),
        (("m", 0.0625, "4x4"), "NIAH"): (70.0, 60.0, 80.0),
        (("m", 0.0625, "tiers a"), "NIAH"): (90.0, 81.0, 95.0),
        (("m", 0.0625, "tiers b"), "NIAH"): (75.0, 65.0, 85.0),
        (("m", 0.0625, "tiers c"), "NIAH"): (65.0, 55.0, 75.0),
    }
    notes = _tier_verdicts(found, 2)
    assert len(notes) == 3 and all("best uniform point 4x4 (70.00)" in n for n in notes)
    assert "tiers a (90.00)" in notes[0] and notes[0].endswith("beats it beyond the intervals.")
    assert notes[1].endswith("scores above it, within the intervals.")
    assert notes[2].endswith("does not score above it.")
