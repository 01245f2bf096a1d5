"""The transformers canary of `make test-latest` (scripts/transformers_canary.py), without a network."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def load_canary():
    spec = importlib.util.spec_from_file_location("transformers_canary", ROOT / "scripts" / "transformers_canary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


canary = load_canary()

INDEX_OUTPUT = """transformers (5.26.0)
Available versions: 5.26.0, 5.26.0rc1, 5.25.0, 5.24.0, 4.57.1
  INSTALLED: 5.24.0
  LATEST:    5.26.0
"""

METADATA = """Metadata-Version: 2.4
Name: transformers
Version: 5.25.0
Requires-Dist: huggingface-hub<3.0,>=2.4.0
Requires-Dist: numpy>=1.17
Requires-Dist: kernels<0.20,>=0.19.1
Requires-Dist: tomli; python_version < "3.0"
Provides-Extra: torch
Requires-Dist: torch>=2.4; extra == "torch"
"""


def test_the_bound_is_read_from_the_project_and_admits_the_locked_release():
    bound = canary.bound_of((ROOT / "pyproject.toml").read_text())
    locked = next(line.split("==")[1] for line in (ROOT / "requirements/lock.txt").read_text().splitlines()
                  if line.startswith("transformers=="))
    assert locked in bound


def test_the_bound_is_that_of_the_named_package_only():
    text = 'dependencies = [\n    "transformers-stream-generator>=0.1",\n    "transformers>=5.17,<5.26",\n]'
    assert canary.bound_of(text) == SpecifierSet(">=5.17,<5.26")
    with pytest.raises(ValueError, match="no requirement on transformers"):
        canary.bound_of('dependencies = ["torch==2.13.0"]')


def test_pip_index_output_gives_the_releases_newest_first_without_prereleases():
    assert canary.parse_index_versions(INDEX_OUTPUT) == [Version(v) for v in ("5.26.0", "5.25.0", "5.24.0", "4.57.1")]
    assert canary.parse_index_versions("ERROR: No matching distribution found for transformers") == []


def test_a_release_beyond_the_bound_is_named_with_the_bound():
    line = canary.verdict(Version("5.26.0"), Version("5.25.0"), SpecifierSet(">=5.17,<5.26"))
    assert line.startswith("transformers canary: transformers 5.26.0 is out, beyond")
    assert "<5.26" in line and "5.25.0" in line


def test_a_release_within_the_bound_that_pip_did_not_resolve_is_told_apart():
    line = canary.verdict(Version("5.25.0"), Version("5.24.0"), SpecifierSet(">=5.17,<5.26"))
    assert "within" in line and "resolved 5.24.0" in line


def test_nothing_to_say_when_the_newest_release_is_the_one_tested():
    assert canary.verdict(Version("5.25.0"), Version("5.25.0"), SpecifierSet("<5.26")) is None


def test_unmet_requirements_leave_out_extras_and_markers_that_do_not_apply():
    have = {"huggingface-hub": "2.4.0", "numpy": "2.4.6"}
    unmet = canary.unmet_requirements(METADATA, have.get)
    assert unmet == ["kernels<0.20,>=0.19.1 (not installed)"]
    assert canary.unmet_requirements(METADATA, {**have, "kernels": "0.17.2", "huggingface-hub": "2.3.0"}.get) == [
        "huggingface-hub<3.0,>=2.4.0", "kernels<0.20,>=0.19.1"]


def test_offline_the_canary_reports_and_exits_zero(capsys):
    def offline(command, **kwargs):
        if command[1:4] == ["-m", "pip", "index"]:
            return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not fetch URL: connection refused\n")
        raise AssertionError(f"nothing else may run offline: {command}")

    assert canary.main(["--contract"], run=offline) == 0
    out = capsys.readouterr().out
    assert "could not be asked" in out and "connection refused" in out


def test_a_timeout_of_the_registry_is_a_report_too():
    def hangs(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs.get("timeout"))

    newest, why = canary.newest_release(hangs)
    assert newest is None and "TimeoutExpired" in why


def test_a_newer_release_is_announced_and_its_contract_check_is_reported(capsys, monkeypatch):
    monkeypatch.setattr(canary, "installed_version", lambda name: "5.25.0" if name == "transformers" else None)
    monkeypatch.setattr(canary, "contract_check", lambda release, run, timeout: f"checked {release}")

    def index(command, **kwargs):
        return subprocess.CompletedProcess(command, 0, INDEX_OUTPUT, "")

    assert canary.main(["--contract"], run=index) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("transformers canary: transformers 5.26.0 is out, beyond")
    assert out[1] == "checked 5.26.0"


def test_pytest_summary_and_first_failure_are_picked_out():
    output = "..F\nE   AssertionError: boom\nFAILED tests/x.py::t - boom\n==== 1 failed, 2 passed in 3.1s ====\n"
    assert canary.summary_line(output) == "1 failed, 2 passed in 3.1s"
    assert canary.first_failure(output) == "E   AssertionError: boom"
