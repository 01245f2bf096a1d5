"""scripts/gpu_sweep.sh: every job it would run on a lent GPU composes into a valid run, before device time is spent."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from qpruning.app import runner_from_config
from tests.test_config import compose_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_sweep.sh"


def job_lines(tmp_path: Path) -> list[str]:
    env = dict(os.environ, PHASE="jobs", DEVICE="cpu", OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"),
               PYTHON=sys.executable)
    subprocess.run(["bash", str(SCRIPT)], check=True, env=env, cwd=ROOT, capture_output=True, timeout=120)
    return (tmp_path / "out" / "jobs.txt").read_text().splitlines()


def expand(line: str) -> list[list[str]]:
    """The single runs of one multirun line: comma lists outside brackets are swept (as Hydra's basic sweeper)."""
    choices = []
    for override in shlex.split(line):
        key, _, value = override.partition("=")
        values = [value] if value.startswith("[") else value.split(",")
        choices.append([f"{key}={v}" for v in values])
    return [list(c) for c in itertools.product(*choices)]


def test_expand_sweeps_comma_lists_but_not_bracketed_lists():
    runs = expand("a=1,2 b=[3,4] c=x")
    assert runs == [["a=1", "b=[3,4]", "c=x"], ["a=2", "b=[3,4]", "c=x"]]


def test_the_job_list_holds_the_three_sweeps_in_priority_order(tmp_path):
    lines = job_lines(tmp_path)
    assert "device cpu" in (tmp_path / "out" / "log.txt").read_text()  # a CPU listing installs nothing
    names = [re.search(r"experiment_name=(\S+)", line).group(1) for line in lines]
    assert names[:2] == ["fig2_smollm2", "fig2_smollm2"] and "pruner=none" in lines[0]
    assert set(names[2:6]) == {"rotated"} and set(names[6:]) == {"fig2_smollm2"}
    runs = [run for line in lines for run in expand(line)]
    settings = {(dict(o.split("=", 1) for o in run)["compat"] if "compat=" in " ".join(run) else "methods",
                 dict(o.split("=", 1) for o in run)["pruner"]) for run in runs}
    assert {("methods", "snapkv"), ("paper", "snapkv"), ("methods", "pyramidkv"), ("paper", "pyramidkv")} <= settings
    # Figure 2's 6 budgets x 3 precisions x 2 pruners x 2 modes x 2 benchmarks, plus 2 baselines and 16 rotated runs.
    assert len(runs) == 144 + 2 + 16
    assert len({tuple(sorted(r)) for r in runs}) == len(runs)  # no configuration twice


def test_every_job_composes_and_validates(tmp_path):
    lines = job_lines(tmp_path)
    hydra_only = ("experiment_name=", "output_root=")
    seen = set()
    for line in lines:
        for run in expand(line):
            overrides = [o for o in run if not o.startswith(hydra_only)]
            # One run per (benchmark, pruner, quantizer, compat, bits): budgets validate alike.
            key = tuple(sorted(o for o in overrides if not o.startswith("budget=")))
            if key in seen:
                continue
            seen.add(key)
            cfg = compose_config(["model=smollm2_135m", *overrides])
            runner = runner_from_config(cfg, tmp_path / "run")
            runner.validate()
            assert runner.model.name == "smollm2_135m"
    assert len(seen) >= 20
