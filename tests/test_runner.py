"""Runs and sweeps through run.py on the tiny model: grids, resuming, killing, failures, W&B, Slurm."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, run_bounded, slurm_cluster_fixture  # noqa: F401  (the fixture)

from qpruning.benchmarks import Sample, SampleError
from qpruning.benchmarks.niah import NeedleInAHaystack
from qpruning.runner import append_record, read_predictions

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "model=tiny_llama", "benchmark=niah_small", "benchmark.lengths=[600]", "benchmark.depths=[0,100]",
    "budget=null", "tokens=128",
]


def run_py(*overrides, timeout=600, env=None):
    env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "run.py", *overrides], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def complete_runs(root: Path):
    return sorted(p.parent for p in root.rglob("metrics.json"))


def test_the_six_job_grid_runs_as_written_and_a_rerun_does_nothing(tmp_path):
    proc = run_py("-m", "pruner=snapkv,pyramidkv", "bits=4,8,16", *FAST, f"output_root={tmp_path}")
    runs = complete_runs(tmp_path / "sweeps" / "adhoc")
    assert len(runs) == 6
    seen = set()
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        seen.add((metrics["pruner"], metrics["bits"]))
        assert metrics["samples"] == 2 and metrics["failed"] == 0
        assert len(read_predictions(run / "predictions.jsonl")) == 2
        assert metrics["kv_bytes"] < metrics["kv_bytes_full"] * (1.0 if metrics["bits"] < 16 else 2.1)
    assert seen == {(p, b) for p in ("snapkv", "pyramidkv") for b in (4, 8, 16)}
    assert proc.stdout.count("[qpruning]") == 6
    # The report reads the real sweep: the NIAH heatmaps and the budget figure come out, nothing is missing.
    report = tmp_path / "report"
    proc_report = subprocess.run([sys.executable, "-m", "qpruning.report", str(tmp_path / "sweeps"), "--out",
                                  str(report)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc_report.returncode == 0, proc_report.stderr[-3000:]
    index = (report / "index.md").read_text()
    assert "6 complete" in index and "0 partial" in index
    assert list(report.glob("niah_*.png"))
    stamps = {run: (run / "metrics.json").stat().st_mtime_ns for run in runs}
    rerun = run_py("-m", "pruner=snapkv,pyramidkv", "bits=4,8,16", *FAST, f"output_root={tmp_path}")
    assert rerun.stderr.count("complete already") == 6 or rerun.stdout.count("complete already") == 6
    assert {run: (run / "metrics.json").stat().st_mtime_ns for run in runs} == stamps


def test_a_run_killed_midway_resumes_with_every_sample_once_and_the_same_scores(tmp_path):
    overrides = [*FAST, "benchmark.lengths=[400,500,600]", "benchmark.depths=[0,50,100]", "bits=4"]
    reference = run_py(*overrides, f"output_root={tmp_path / 'reference'}")
    assert reference.returncode == 0
    (ref_run,) = complete_runs(tmp_path / "reference")
    killed_root = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "run.py", *overrides, f"output_root={killed_root}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    predictions = None
    while time.time() < deadline:
        found = list(killed_root.rglob("predictions.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            predictions = found[0]
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert predictions is not None, "the run never got going"
    done_before = len(read_predictions(predictions))
    assert done_before < 9 and not (predictions.parent / "metrics.json").exists()
    run_py(*overrides, f"output_root={killed_root}")
    records = read_predictions(predictions)
    ids = [r["id"] for r in records]
    assert len(ids) == 9 == len(set(ids))
    expected = {r["id"]: r["score"] for r in read_predictions(ref_run / "predictions.jsonl")}
    assert {r["id"]: r["score"] for r in records} == expected
    ours = json.loads((predictions.parent / "metrics.json").read_text())
    theirs = json.loads((ref_run / "metrics.json").read_text())
    assert ours["score"] == theirs["score"] and ours["kv_bytes"] == theirs["kv_bytes"]


def test_a_line_cut_by_a_kill_is_dropped_and_redone(tmp_path):
    path = tmp_path / "predictions.jsonl"
    append_record(path, {"id": "a", "score": 1.0})
    with path.open("a") as handle:
        handle.write('{"id": "b", "sco')
    assert [r["id"] for r in read_predictions(path)] == ["a"]
    assert path.read_text() == '{"id": "a", "score": 1.0}\n'


class FailingNIAH(NeedleInAHaystack):
    """NIAH where one sample cannot be scored."""

    def score(self, sample: Sample, prediction: str) -> float:
        if sample.extra.get("depth") == 100:
            raise SampleError("no reference to score against")
        return super().score(sample, prediction)


def test_a_failing_sample_is_recorded_as_failed_and_the_run_goes_on(tmp_path, tiny_models):
    from qpruning import KIVI, KVCompressor, SnapKV
    from qpruning.models import ModelSpec
    from qpruning.runner import RunLabels, Runner

    runner = Runner(
        model=ModelSpec(name="tiny_llama", name_or_path="tiny:llama", dtype="float32", device="cpu"),
        compressor=KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), tokens=128),
        benchmark=FailingNIAH(lengths=[500], depths=[0, 100, 50]),
        labels=RunLabels("niah", "tiny_llama", "snapkv", "kivi", 4, 64, tokens=128),
        output_dir=tmp_path,
    )
    metrics = runner.run()
    records = read_predictions(tmp_path / "predictions.jsonl")
    failed = [r for r in records if r["status"] == "failed"]
    assert len(records) == 3 and len(failed) == 1
    assert failed[0]["error"] == "no reference to score against" and failed[0]["score"] is None
    assert metrics["samples"] == 2 and metrics["failed"] == 1


def test_wandb_offline_logs_config_metrics_and_samples(tmp_path):
    from wandb_records import summarize

    run_py(*FAST, "logger=wandb", "logger.project=qpruning-test", "experiment_name=wandbcheck",
           f"output_root={tmp_path}", env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    (run,) = complete_runs(tmp_path)
    (run_file,) = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    written = summarize(run_file)
    metrics = json.loads((run / "metrics.json").read_text())
    assert written["group"] == "wandbcheck"
    assert written["config"]["pruner"]["name"] == "snapkv"
    assert written["config"]["model"]["name"] == "tiny_llama"
    assert written["summary"]["score"] == metrics["score"]
    assert written["summary"]["kv_bytes"] == metrics["kv_bytes"]
    assert written["history"]["samples_table/nrows"] == 2
    (table,) = list(run_file.parent.rglob("samples_table*.table.json"))
    rows = json.loads(table.read_text())
    assert len(rows["data"]) == 2 and "prediction" in rows["columns"]


@pytest.mark.slurm
@pytest.mark.timeout(420)
def test_a_two_job_sweep_runs_through_slurm(slurm_cluster: SlurmCluster, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "run.py", "-m", *FAST, "bits=4,16", f"output_root={tmp_path}",
           *slurm_cluster.launcher_overrides(sweep)]
    proc = run_bounded(cmd, timeout_s=360, env=slurm_cluster.env(WANDB_MODE="offline"), cwd=REPO)
    logs = slurm_cluster.job_logs(sweep / ".submitit")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:] + logs
    runs = complete_runs(sweep)
    assert len(runs) == 2, logs
    assert {json.loads((r / "metrics.json").read_text())["bits"] for r in runs} == {4, 16}
