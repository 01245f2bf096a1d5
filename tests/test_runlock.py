"""One process per run folder: a second process stops with one line naming the holder, before loading anything;
the lock goes with the process that held it, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from test_config import compose_config
from test_runner import FAST, REPO, run_py

from qpruning.runlock import LOCK_FILE, RunLock, RunLockedError

HOLD = (
    "import sys, time\n"
    "from qpruning.runlock import RunLock\n"
    "RunLock(sys.argv[1]).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


def hold_lock(folder) -> subprocess.Popen:
    """Another real process that takes the folder's lock and keeps it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_folder_held_by_another_process_is_refused_and_freed_when_it_dies(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"{tmp_path} is being run by process {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(tmp_path):  # the kernel released it with the process
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    with RunLock(tmp_path):  # and we released ours
        pass


def test_a_second_run_py_on_a_busy_folder_exits_2_with_one_line_before_loading(tmp_path):
    overrides = [*FAST, f"output_root={tmp_path}"]
    folder = tmp_path / "runs" / compose_config(overrides).run_name
    holder = hold_lock(folder)
    try:
        started = time.time()
        proc = subprocess.run([sys.executable, "run.py", *overrides], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
        assert proc.returncode == 2, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("qpruning: error:")]
        assert errors == [f"qpruning: error: {folder} is being run by process {holder.pid}; wait for it to finish "
                          "(or stop it), then rerun: the rerun resumes where it stopped"]
        assert "Traceback" not in proc.stderr and not (folder / "predictions.jsonl").exists()
        assert time.time() - started < 120
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    run_py(*overrides)  # the holder is gone: the run goes through
    assert (folder / "metrics.json").exists()
