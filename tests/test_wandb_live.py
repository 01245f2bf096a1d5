"""W&B never holds a run up and shows it live: without a network it goes offline within 10 s with one warning;
each finished sample logs progress and the running score; sweep runs share a group, and the report joins it.

No test goes online: the "server" is a closed local port, or a local socket that accepts and never answers."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
from test_runner import FAST, REPO, complete_runs
from wandb_records import read_records, summarize

from qpruning.loggers import wandb_init

NO_NETWORK = {
    "WANDB_BASE_URL": "http://127.0.0.1:9",  # the discard port: nothing listens, the connection is refused
    "WANDB_API_KEY": "0" * 40,
    "WANDB_ERROR_REPORTING": "false",
    "WANDB_SILENT": "true",
}


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key, value in NO_NETWORK.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    wandb.teardown()  # forget the settings of earlier runs in this process (an offline WANDB_MODE)
    yield
    wandb.teardown()


def history_rows(run_file) -> list[dict]:
    rows = []
    for record in read_records(run_file):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_no_server_goes_offline_at_once_with_one_warning(no_network, tmp_path, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="qpruning.loggers"):
        run = wandb_init(project="qpruning-test", dir=str(tmp_path))
    try:
        assert run.settings.mode == "offline"
        assert time.monotonic() - started < 10
    finally:
        run.finish()
    warnings = [r for r in caplog.records if r.name == "qpruning.loggers"]
    assert len(warnings) == 1 and "127.0.0.1:9" in warnings[0].getMessage()
    assert "logging offline instead" in warnings[0].getMessage()


def test_a_server_that_never_answers_goes_offline_within_10_seconds(no_network, monkeypatch, tmp_path, caplog):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections are accepted by the kernel, then nothing is ever said
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="qpruning.loggers"):
            run = wandb_init(project="qpruning-test", dir=str(tmp_path))  # the default timeouts
        elapsed = time.monotonic() - started
        run.finish()
    finally:
        silent.close()
    assert run.settings.mode == "offline" and elapsed < 10, elapsed
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "qpruning.loggers"]
    assert "cannot be reached" not in warning, warning  # the probe connected: wandb.init's own timeout fired


def test_a_sweep_run_without_network_logs_live_progress_offline_in_its_group(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(NO_NETWORK)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "run.py", "-m", *FAST, "logger=wandb", "logger.project=qpruning-test",
         "experiment_name=livecheck", f"output_root={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert time.monotonic() - started < 300
    assert (proc.stdout + proc.stderr).count("logging offline instead") == 1
    (run,) = complete_runs(tmp_path / "sweeps" / "livecheck")
    (run_file,) = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert summarize(run_file)["group"] == "livecheck"
    live = [row for row in history_rows(run_file) if "progress/samples_done" in row]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["progress/samples_done"] for row in live] == [1, 2]
    assert [row["progress/fraction"] for row in live] == [0.5, 1.0]
    scores = [r["score"] for r in map(json.loads, (run / "predictions.jsonl").read_text().splitlines())]
    assert [row["sample/score"] for row in live] == scores
    assert live[0]["progress/running_score"] == scores[0]
    assert live[-1]["progress/running_score"] == pytest.approx(metrics["score"])


def test_the_report_uploads_its_tables_and_figures_to_the_sweeps_group(tmp_path):
    sweep = tmp_path / "outputs"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "run.py", "-m", *FAST, "bits=4,16", "experiment_name=groupcheck",
                    f"output_root={sweep}"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
                   check=True)
    proc = subprocess.run([sys.executable, "-m", "qpruning.report", str(sweep / "sweeps"), "--out",
                           str(tmp_path / "report"), "--wandb", "--wandb-project", "qpruning-test"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_file,) = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    written = summarize(run_file)
    assert written["group"] == "groupcheck"
    media = run_file.parent / "files" / "media"
    figures = list((tmp_path / "report").glob("*.png"))
    assert figures and (tmp_path / "report" / "table1.md").exists()
    for figure in figures:  # every figure as an image of the run
        assert list((media / "images" / "report").glob(f"{figure.stem}_*.png")), figure.name
    assert list((media / "table" / "report").glob("table1_*.table.json"))  # the table as a W&B table
