"""The report's quantizers table: a quantizer beyond the paper's (kvquant) beside KIVI at the same budget, with the
scores' bootstrap intervals, the bytes held and a verdict against KIVI's best run at that budget."""

from __future__ import annotations

import pytest
from fabricate_runs import RunSpec, write_run

from qpruning.report import build_report, collect_runs
from qpruning.report.tables import _quantizer_verdicts, quantizers
from qpruning.report.uncertainty import run_interval


def run(tmp_path, name, quant, bits, score, budget=1 / 16):
    write_run(tmp_path / name, RunSpec("niah", model="smollm2_135m", budget=budget, bits=bits, quant=quant,
                                       budget_mode="exact", samples=40, score=score, score_from_samples=True))


def test_the_quantizers_table_puts_kvquant_beside_kivi_at_its_budget(tmp_path):
    run(tmp_path, "kivi4", "kivi", 4, 70.0)
    run(tmp_path, "kivi2", "kivi", 2, 55.0)
    run(tmp_path, "kvq2", "kvquant", 2, 65.0)
    run(tmp_path, "kivi_other_budget", "kivi", 4, 60.0, budget=1 / 32)  # no kvquant run there: not shown
    runs = collect_runs([tmp_path]).runs
    table = quantizers(runs)
    wide = table.wide()
    rows = {(dict(zip(table.row_keys, r))["bits"], dict(zip(table.row_keys, r))["quant"]): r for r in table.row_order}
    assert sorted(rows) == [(2, "kivi"), (2, "kvquant"), (4, "kivi")]
    for (bits, quant), row in rows.items():
        folder = {(4, "kivi"): "kivi4", (2, "kivi"): "kivi2", (2, "kvquant"): "kvq2"}[bits, quant]
        found = runs[runs["run_dir"] == str(tmp_path / folder)].iloc[0]
        interval = run_interval(found["run_dir"])
        assert wide.loc[row, ("NIAH", "score")] == pytest.approx(float(found["score"]))
        assert wide.loc[row, ("NIAH", "low")] == pytest.approx(interval.low)
        assert wide.loc[row, ("NIAH", "kib")] == pytest.approx(float(found["kv_bytes"]) / 1024)
    assert any("kvquant 2-bit" in n and "best KIVI run, 4-bit" in n for n in table.notes)
    report = build_report([tmp_path], tmp_path / "report", use_paper=False)
    assert report.tables["quantizers"] is not None and (tmp_path / "report" / "quantizers.md").exists()


def test_without_a_quantizer_beyond_the_papers_there_is_no_quantizers_table(tmp_path):
    run(tmp_path, "kivi4", "kivi", 4, 70.0)
    run(tmp_path, "flexgen4", "flexgen", 4, 60.0)
    assert quantizers(collect_runs([tmp_path]).runs) is None


def test_quantizer_verdicts_compare_with_kivis_best_run_and_its_interval():
    found = {
        (("m", 0.0625), 4, "kivi"): (70.0, 60.0, 80.0),
        (("m", 0.0625), 2, "kivi"): (50.0, 40.0, 60.0),
        (("m", 0.0625), 2, "kvquant"): (90.0, 81.0, 95.0),
        (("m", 0.0625), 4, "kvquant"): (75.0, 65.0, 85.0),
        (("m", 0.0625), 8, "kvquant"): (40.0, 30.0, 55.0),
        (("m", 0.0625), 16, "kvquant"): (65.0, 55.0, 75.0),
    }
    notes = _quantizer_verdicts({((*k[0], k[1], k[2]), "NIAH"): v for k, v in found.items()}, 2)
    assert len(notes) == 4 and all("best KIVI run, 4-bit (70.00)" in n for n in notes)
    verdicts = {n.split(": ")[1].split(" (")[0]: n for n in notes}
    assert verdicts["kvquant 2-bit"].endswith("beats it beyond the intervals.")
    assert verdicts["kvquant 4-bit"].endswith("scores above it, within the intervals.")
    assert verdicts["kvquant 8-bit"].endswith("falls below it beyond the intervals.")
    assert verdicts["kvquant 16-bit"].endswith("does not score above it.")


def test_runs_that_all_drop_out_of_the_quantizers_table_give_no_table_and_no_error(tmp_path):
    # no run has a budget (tokens given): nothing left to compare (a list mask of the empty frame once selected
    # columns, not rows, and the report ended in a KeyError)
    for name, quant in (("kivi", "kivi"), ("kvq", "kvquant")):
        write_run(tmp_path / name, RunSpec("niah", model="smollm2_135m", tokens=128, bits=4, quant=quant, samples=4))
    assert quantizers(collect_runs([tmp_path]).runs) is None
