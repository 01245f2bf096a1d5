"""Every bad input is refused in one line (``qpruning: error: ...``), exit status 2, before any model loads.

The table is ``tests/bad_inputs.py``. Every case runs in this process through the real entry
(:func:`qpruning.cli.main`), with a tripwire in place of loading a model; the cases marked ``subprocess`` also run
as real commands (``python run.py``, ``python -m qpruning.cli optimize``, ``python -m qpruning.report``), where
the model's ``loading model`` log line must be absent and no traceback may appear.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from bad_inputs import CASES, GROUPS, PREFIX, REPO, Case, run_in_process, run_subprocess

from qpruning.errors import EXIT_USER_ERROR, ConfigError


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    # setenv, not delenv: `--debug` sets QPRUNING_DEBUG=1 in os.environ itself, and a delenv of an absent variable
    # records nothing to restore, so the 1 would leak into every later test. "0" means off (errors.debug_requested).
    monkeypatch.setenv("QPRUNING_DEBUG", "0")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # conftest's interpreter would let kernel=on run on the CPU


def test_the_table_holds_at_least_200_distinct_bad_inputs_in_classes():
    assert len(CASES) >= 200
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({(c.app, c.args, tuple(c.files.items())) for c in CASES}) == len(CASES)
    assert all(cases for cases in GROUPS.values()) and all(c.group in GROUPS for c in CASES)


def assert_one_line(outcome, case):
    assert outcome.code == EXIT_USER_ERROR, (case.id, outcome.code, outcome.stderr[-2000:])
    assert not outcome.model_loaded, f"{case.id}: a model was loaded"
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert not outcome.outside, f"{case.id}: written outside the output root: {outcome.outside}"
    lines = outcome.error_lines()
    assert len(lines) == 1, outcome.stderr
    assert outcome.last_line() == lines[0], outcome.stderr
    message = lines[0][len(PREFIX):]
    assert case.mentions in message, (case.id, message)
    assert "; " in message  # what was wrong; what is allowed


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_is_one_line_and_exit_2_before_the_model(case, tmp_path):
    assert_one_line(run_in_process(case, tmp_path), case)


SUBPROCESS_CASES = [c for c in CASES if c.subprocess]


@pytest.fixture(scope="module")
def command_outcomes(tmp_path_factory):
    """Every subprocess case, run as a real command, four at a time (most of each is Python's imports)."""
    root = tmp_path_factory.mktemp("commands")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {c.id: pool.submit(run_subprocess, c, root / c.id) for c in SUBPROCESS_CASES}
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_a_bad_input_on_the_real_command_line(case, command_outcomes):
    assert_one_line(command_outcomes[case.id], case)


def test_debug_shows_the_exception_instead(tmp_path, monkeypatch):
    case = next(c for c in CASES if c.id == "bits-float")
    with pytest.raises(ConfigError, match=r"bits=4\.0"):
        run_in_process(replace(case, args=(*case.args, "--debug")), tmp_path)
    monkeypatch.delenv("QPRUNING_DEBUG")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match=r"bits=4\.0"):
        run_in_process(case, tmp_path)


def test_a_valid_command_passes_the_checks_and_reaches_the_model(tmp_path):
    # The tripwire fires: the table's refusals are not the entry refusing everything.
    ok = Case("ok", "run", ("model=tiny_llama", "bits=4", "tokens=128", "benchmark.lengths=[600]",
                                  "benchmark.depths=[50]"), "")
    outcome = run_in_process(ok, tmp_path)
    assert outcome.model_loaded and outcome.error_lines() == []


def test_report_warns_when_predictions_and_metrics_disagree(tmp_path):
    run = tmp_path / "runs" / "one"
    run.mkdir(parents=True)
    lines = [json.dumps({"id": f"s{i}", "task": "t", "status": "ok", "score": 100.0}) for i in range(3)]
    (run / "predictions.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # cut after the run
    metrics = {"benchmark": "niah", "model": "m", "pruner": "snapkv", "quant": "kivi", "bits": 4, "group_size": 64,
               "tokens": 128, "score": 100.0, "samples": 3, "failed": 0}
    (run / "metrics.json").write_text(json.dumps(metrics))
    proc = subprocess.run([sys.executable, "-m", "qpruning.report", str(tmp_path / "runs"), "--out",
                           str(tmp_path / "report"), "--no-paper"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metrics.json counts 3 samples" in proc.stderr and "holds 1" in proc.stderr
    assert "metrics.json counts 3 samples" in (tmp_path / "report" / "index.md").read_text()


def test_the_preflight_composes_each_sweep_job_as_hydra_does():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from qpruning.app import register_resolvers
    from qpruning.entry import CONF_DIR, job_configs, job_overrides, preflight

    register_resolvers()
    overrides = ["experiment=demo", "model=tiny_llama", "pruner.window=16", "+layerwise=16bit_8-15"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        jobs = job_overrides("config", overrides)
        assert len(jobs) == 6  # the experiment's params: 2 benchmarks x 3 bits
        for job, fast in zip(jobs, job_configs("config", jobs)):
            full = compose("config", overrides=list(job))
            assert OmegaConf.to_container(fast, resolve=True) == OmegaConf.to_container(full, resolve=True), job
    GlobalHydra.instance().clear()
    assert preflight("config", ["experiment=demo", "model=tiny_llama"], multirun=True) == 6


PATH_GROUP = "Paths: names that become folders, and the output root"
NAME_CASES = [c for c in GROUPS[PATH_GROUP] if not any(a.startswith("output_root=") for a in c.args)]


@pytest.mark.parametrize("case", NAME_CASES, ids=[c.id for c in NAME_CASES])
def test_a_name_that_would_leave_the_output_root_writes_nothing_outside_it(case, tmp_path, monkeypatch):
    # The output root eight folders deep in the case's folder (the working directory too): a '..' that escaped it
    # would land in the folder the test looks at.
    root = tmp_path / "a" / "b" / "c" / "d" / "e" / "f" / "g" / "h" / "outputs"
    monkeypatch.chdir(tmp_path)
    outcome = run_in_process(replace(case, args=(*case.args, f"output_root={root}")), tmp_path)
    assert_one_line(outcome, case)
    assert [p for p in tmp_path.rglob("*") if p.is_file() and root not in p.parents] == []


def test_a_plain_name_writes_its_run_folder_inside_the_output_root(tmp_path, monkeypatch):
    # The control of the test above: the same look finds the folder a run that passes its checks writes.
    root = tmp_path / "a" / "b" / "outputs"
    monkeypatch.chdir(tmp_path)
    ok = Case("ok", "run", ("model=tiny_llama", "model.name=my.model", "layer_config=16bit@0-1", "tokens=128",
                            "benchmark.lengths=[600]", "benchmark.depths=[50]", f"output_root={root}"), "")
    outcome = run_in_process(ok, tmp_path)
    assert outcome.model_loaded and outcome.outside == []
    folders = {p.parent for p in tmp_path.rglob("*") if p.is_file()}
    assert folders and all(root in p.parents for p in folders)
    assert any(p.relative_to(root).parts[:2] == ("runs", "my.model") for p in folders)
