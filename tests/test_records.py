"""The run folder's records: every good line survives a bad one anywhere (predictions.jsonl, evaluations.jsonl),
the bad one is named and kept aside, and a full disk fails in one line without leaving a temp file."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys

import pytest
from test_runner import FAST, REPO

from qpruning.optimize.search import Evaluation, EvaluationCache
from qpruning.records import RunFileError, append_jsonl, read_jsonl, write_json_atomic
from qpruning.runner import read_predictions


def lines(path):
    return path.read_text().splitlines()


def test_a_bad_line_in_the_middle_is_skipped_named_and_set_aside_and_every_good_line_kept(tmp_path, caplog):
    path = tmp_path / "predictions.jsonl"
    for name in "ab":
        append_jsonl(path, {"id": name})
    with path.open("a") as handle:
        handle.write('{"id": "c", "sco\n[1, 2]\n{"no_id": 1}\n')
    append_jsonl(path, {"id": "d"})
    with caplog.at_level(logging.WARNING):
        records = read_predictions(path)
    assert [r["id"] for r in records] == ["a", "b", "d"]
    message = caplog.text
    assert str(path) in message and "line 3" in message and "line 4" in message and "line 5" in message
    assert [json.loads(line)["id"] for line in lines(path)] == ["a", "b", "d"]
    assert lines(path.with_name("predictions.jsonl.rejected")) == ['{"id": "c", "sco', "[1, 2]", '{"no_id": 1}']
    caplog.clear()
    assert [r["id"] for r in read_predictions(path)] == ["a", "b", "d"] and not caplog.text  # repaired for good


def test_a_last_line_without_its_newline_gets_one_so_the_next_append_starts_clean(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    append_jsonl(path, {"id": "c"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]


def test_reading_without_repair_leaves_the_file_as_it_is(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a"}\nbroken\n{"id": "b"}\n')
    assert [r["id"] for r in read_jsonl(path, repair=False)] == ["a", "b"]
    assert path.read_text() == '{"id": "a"}\nbroken\n{"id": "b"}\n'


def evaluation(key: str, objective: float) -> Evaluation:
    return Evaluation(key=key, objective=objective, allocation=[], nbytes=1)


def test_evaluations_after_a_cut_line_are_read_back_and_the_cut_line_is_set_aside(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    cache = EvaluationCache(path)
    cache.put(evaluation("a", 1.0))
    with path.open("a") as handle:
        handle.write('{"key": "b", "objective": 0.')  # a kill mid-write
    with path.open("a") as handle:  # a later process appends (the old code glued this to the cut line)
        handle.write("\n")
    append_jsonl(path, vars(evaluation("c", 3.0)))
    with path.open("a") as handle:
        handle.write('{"key": "d", "objective": "x", "unexpected": 1}\n')  # not an Evaluation
    reread = EvaluationCache(path)
    assert sorted(reread.entries) == ["a", "c"] and reread.get("c").objective == 3.0
    reread.put(evaluation("e", 5.0))
    assert sorted(EvaluationCache(path).entries) == ["a", "c", "e"]
    assert len(lines(path.with_name("evaluations.jsonl.rejected"))) == 2


def test_a_full_disk_fails_with_one_clear_message_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import qpruning.records as records

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full)
    target = tmp_path / "metrics.json"
    with pytest.raises(RunFileError) as caught:
        write_json_atomic(target, {"score": 1.0})
    assert str(caught.value) == (f"could not write {target}: no space left on the device; free some space and rerun "
                                 "(finished samples are kept, a rerun resumes)")
    assert os.listdir(tmp_path) == []


FULL_DISK_AT_METRICS = """
import errno, os, runpy, sys
real_fsync = os.fsync
def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".metrics.json.tmp"):
        raise OSError(errno.ENOSPC, "No space left on device")
    real_fsync(fd)
os.fsync = fsync
sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path("run.py", run_name="__main__")
"""


def test_run_py_on_a_full_disk_prints_one_line_and_keeps_the_samples(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_AT_METRICS, *FAST, f"output_root={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr[-3000:]
    (predictions,) = tmp_path.rglob("predictions.jsonl")
    folder = predictions.parent
    assert [line for line in proc.stderr.splitlines() if line.startswith("qpruning: error:")] == [
        f"qpruning: error: could not write {folder / 'metrics.json'}: no space left on the device; free some space "
        "and rerun (finished samples are kept, a rerun resumes)"
    ]
    assert "Traceback" not in proc.stderr
    assert len(lines(predictions)) == 2
    names = sorted(p.name for p in folder.iterdir())
    assert "metrics.json" not in names and not [n for n in names if n.endswith(".tmp")], names
