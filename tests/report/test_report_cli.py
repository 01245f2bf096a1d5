"""End to end: ``python -m qpruning.report`` on fabricated sweeps, index.md, subsets, W&B offline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fabricate_runs import RunSpec, write_run

from qpruning.report import build_report
from qpruning.report.__main__ import main
from qpruning.report.index import FIGURE_NEEDS, TABLE_NEEDS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def full_report(sweep, throughput_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    code = main([str(sweep["root"]), "--out", str(out), "--throughput", str(throughput_file)])
    assert code == 0
    return out


def _links(index: str) -> list[str]:
    return re.findall(r"\]\(([^)#][^)]*)\)", index)


def test_cli_writes_every_table_in_three_formats_and_every_figure(full_report):
    for name in ("table1", "table2", "table3", "table4"):
        for suffix in (".csv", ".md", ".tex", "_cells.csv"):
            assert (full_report / f"{name}{suffix}").is_file(), name + suffix
        assert (full_report / f"{name}_vs_paper.md").is_file()
    for name in (
        "fig1_crossentropy",
        "fig2_budget",
        "fig3_lengths",
        "fig4_scale",
        "fig9_layers",
        "fig10_quant",
    ):
        assert (full_report / f"{name}.png").stat().st_size > 10_000
        assert (full_report / f"{name}.csv").is_file()
    assert list(full_report.glob("niah_*.png"))


def test_index_shows_everything_and_every_link_resolves(full_report):
    index = (full_report / "index.md").read_text()
    for title in (
        "Table 1",
        "Table 2",
        "Table 3",
        "Table 4",
        "Figure 1",
        "Figure 2",
        "Figure 3",
        "Figure 4",
        "Figure 9",
        "Figure 10",
        "NIAH heatmaps",
        "Partial runs",
        "Duplicates",
        "Runs used",
    ):
        assert f"## {title}" in index, title
    assert "no runs yet" not in index
    assert "Ours vs. the paper" in index and "Samples behind each cell" in index
    links = _links(index)
    assert links
    for link in links:
        assert (full_report / link).is_file(), link
    pngs = {p.name for p in full_report.glob("*.png")}
    assert pngs == {link for link in links if link.endswith(".png")}


def test_index_lists_the_partial_run_with_its_samples_and_the_duplicates(sweep, full_report):
    index = (full_report / "index.md").read_text()
    partial_section = index.split("## Partial runs (not used)")[1].split("## Duplicates")[0]
    assert str(sweep["partial"].resolve()) in partial_section
    assert "| 3 |" in partial_section  # samples done
    dup_section = index.split("## Duplicates (not used)")[1].split("## Runs used")[0]
    assert str(sweep["duplicate_old"].resolve()) in dup_section
    assert "12.35" in dup_section  # the old run's score is shown, not averaged in
    assert "Missing:" in index and "Token=512 2-bit: no run" in index


def test_runs_csv_lists_every_folder_with_its_status(sweep, full_report):
    frame = pd.read_csv(full_report / "runs.csv")
    assert len(frame) == len(list(sweep["root"].rglob("predictions.jsonl")))
    assert set(frame["status"]) == {"complete", "partial"}
    assert frame[frame["status"] == "partial"]["samples_done"].tolist() == [3]
    assert (~frame["kept"].astype(bool) & (frame["status"] == "complete")).sum() >= 1


def test_cli_prints_one_summary_line(sweep, tmp_path, capsys):
    main([str(sweep["root"] / "machine_b"), "--out", str(tmp_path), "--no-paper"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("report: ") and "index.md" in out[0]
    assert not list(tmp_path.glob("*_vs_paper*"))


def test_a_niah_demo_subset_reports_what_exists_and_lists_the_rest_as_no_runs_yet(tmp_path):
    for bits in (16, 8, 4):
        write_run(
            tmp_path / "runs" / "multirun" / "2025-06-01" / "12-00-00" / str(bits),
            RunSpec("niah", model="smollm2_135m", pruner="snapkv", budget=1 / 64, bits=bits, samples=20),
        )
    report = build_report([tmp_path / "runs"], tmp_path / "out")
    index = (tmp_path / "out" / "index.md").read_text()
    assert [t for t in report.tables.values() if t is not None] == []
    for title in (
        "Table 1",
        "Table 2",
        "Table 3",
        "Table 4",
        "Figure 1",
        "Figure 3",
        "Figure 4",
        "Figure 9",
        "Figure 10",
    ):
        assert re.search(rf"- {title}[^\n]*: no runs yet", index), title
    assert "## Not in this report yet (no runs)" in index
    assert "## Figure 2" in index and "## NIAH heatmaps" in index
    assert not list((tmp_path / "out").glob("table*"))
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {
        "fig2_budget.png",
        "niah_smollm2_135m_snapkv_budget.png",
    }


def test_an_empty_folder_gives_an_index_that_says_so(tmp_path):
    report = build_report([tmp_path / "nothing"], tmp_path / "out", use_paper=False)
    index = report.index.read_text()
    assert "Run folders found: **0**" in index
    assert index.count("no runs yet") == len(TABLE_NEEDS) + len(FIGURE_NEEDS)  # every table and figure
    assert "report: 0 tables, 0 figures" in report.summary()


def test_module_runs_as_a_program(sweep, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "qpruning.report", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert "--throughput" in result.stdout and "--wandb" in result.stdout


def test_wandb_push_logs_tables_and_figures_offline(sweep, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    from qpruning.report import push_to_wandb

    report = build_report([sweep["root"] / "machine_b"], tmp_path / "out")
    run_id = push_to_wandb(report, project="qpruning-test")
    assert run_id
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs and not (tmp_path / "out" / "wandb").exists()
