"""The GPU check (scripts/gpu_check.py): its goal lines on made-up rows, and the script itself on CPU."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = load_script("gpu_check")


def decode_row(batch: int, tokens: int, x_floor: float, method: str = "fused") -> dict:
    return {"batch": str(batch), "tokens_16bit": str(tokens), "method": method, "x_floor": str(x_floor),
            "median_us": "10.0"}


def test_kernel_goal_judges_only_large_shapes_against_1_3x_the_floor():
    rows = [
        decode_row(1, 8192, 9.0),  # batch 1: outside the goal, however slow
        decode_row(16, 512, 9.0),  # T 512: outside
        decode_row(16, 2048, 1.29),
        decode_row(64, 8192, 1.31),
        decode_row(64, 8192, 0.5, method="sdpa16"),  # not the kernel
    ]
    checks = gpu_check.kernel_goal(rows)
    assert [(c.status, "batch 16" in c.name) for c in checks] == [("PASS", True), ("MISS", False)]
    assert gpu_check.kernel_goal(rows[:2])[0].status == "n/a"


def throughput_row(batch: int, cache: str, bits: int, tokens_per_s: float | str, kernel: str = "on") -> dict:
    return {"batch": str(batch), "cache": cache, "bits": str(bits), "tokens_per_s": str(tokens_per_s),
            "kernel": kernel if cache == "qpruning" else cache, "tokens": "512" if bits == 4 else "128"}


def test_throughput_goal_compares_4x4_through_the_kernel_with_1x16_in_a_dynamic_cache():
    rows = [
        throughput_row(64, "dynamic", 16, 1000.0),
        throughput_row(64, "qpruning", 4, 1100.0),
        throughput_row(64, "qpruning", 4, 5000.0, kernel="off"),  # the reference path is not the goal's
        throughput_row(64, "hqq", 4, 500.0),
        throughput_row(128, "dynamic", 16, 2000.0),
        throughput_row(128, "qpruning", 4, 1800.0),
        throughput_row(96, "dynamic", 16, 1500.0),
        throughput_row(96, "qpruning", 4, ""),  # out of memory: no number
    ]
    checks = {c.name.rsplit(" ", 1)[1]: c for c in gpu_check.throughput_goal(rows)}
    assert checks["64"].status == "PASS" and checks["64"].value.startswith("1.10x")
    assert "QuantizedCache(HQQ) 4x4: 0.50x" in checks["64"].note
    assert checks["128"].status == "MISS" and checks["128"].value.startswith("0.90x")
    assert checks["96"].status == "n/a"


def test_junit_rows_read_outcomes_and_messages(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.t" name="test_ok" time="0.5"/>'
        '<testcase classname="tests.t" name="test_bad" time="1"><failure message="assert 1 == 2">x</failure></testcase>'
        '<testcase classname="tests.t" name="test_skip" time="0"><skipped message="no GPU"/></testcase>'
        '<testcase classname="" name="" time="0"/>'  # what an interrupted session adds
        "</testsuite></testsuites>"
    )
    rows = gpu_check.junit_rows(xml, "kernels")
    assert [(r["test"], r["outcome"], r["message"]) for r in rows] == [
        ("tests.t::test_ok", "passed", ""), ("tests.t::test_bad", "failed", "assert 1 == 2"),
        ("tests.t::test_skip", "skipped", "no GPU"),
    ]
    assert gpu_check.junit_rows(tmp_path / "missing.xml", "kernels") == []


def test_bad_settings_say_what_is_allowed():
    with pytest.raises(ValueError, match="use PASS, MISS or n/a"):
        gpu_check.Check("b", "x", "OK")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--timeout", "z=10"])
    assert gpu_check.parse_args(["--device", "cpu", "--parts", "b", "--timeout", "b=5"]).budget_s == 5


def test_wheelhouse_check_finds_an_unmet_requirement(tmp_path):
    import zipfile

    checker = load_script("gpu_wheels_check")

    def wheel(name: str, requires: list[str]) -> None:
        with zipfile.ZipFile(tmp_path / f"{name}-1.0-py3-none-any.whl", "w") as z:
            meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(
                f"Requires-Dist: {r}\n" for r in requires)
            z.writestr(f"{name}-1.0.dist-info/METADATA", meta + "\nA description.\n")

    wheel("alpha", ["beta>=1", "torch>=2.0", "pytest; extra == 'dev'", "tomli; python_version < '3.11'", "kernels>=0.19.1"])
    wheel("beta", ["not-on-the-box-pkg"])
    assert checker.unmet(tmp_path, "box") == [
        "beta needs not-on-the-box-pkg: neither in " + str(tmp_path) + " nor installed"
    ]


def test_cpu_smoke_run_of_part_b_writes_the_summary(tmp_path):
    # About 30 s: the decode benchmark at tiny shapes, the kernel under Triton's interpreter.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--small", "--parts", "b", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "CPU smoke run, not a performance result" in summary
    assert "n/a** (b) fused kernel within 1.3x" in summary  # no large shape in a --small run
    with open(tmp_path / "decode.csv") as f:
        methods = {row["method"] for row in csv.DictReader(f)}
    assert methods == {"sdpa16", "dequant_sdpa", "fused", "fused16"}


@pytest.mark.slow
def test_cpu_smoke_run_of_every_part(tmp_path):
    # A few minutes: what results/bench/gpu_check_cpu_smoke/ holds. Part d needs the embedded SmolLM2.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--small", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=1200,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    names = {p.name for p in tmp_path.iterdir()}
    assert {"summary.md", "summary.csv", "tests.csv", "decode.csv", "throughput.csv", "niah.csv", "log.txt"} <= names
    assert len(names) <= 8  # the device tool brings back at most 8 files
    with open(tmp_path / "summary.csv") as f:
        statuses = {row["status"] for row in csv.DictReader(f) if row["part"] == "a"}
    assert statuses == {"PASS"}
