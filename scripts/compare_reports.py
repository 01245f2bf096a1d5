"""Build the same reports with two checkouts of qpruning and compare them file by file, byte for byte.

    python scripts/compare_reports.py BEFORE_CHECKOUT AFTER_CHECKOUT [--work DIR] [--real RESULT_DIR ...]

The inputs are made once, by the AFTER checkout's ``tests/report/fabricate_runs.py`` (the tests' sweeps: the
compact sweep, the full paper grid with a throughput CSV, the SmolLM2 sweep in both compat modes, a single-mode
sweep), plus any real result folders given with ``--real``. Each checkout then runs ``python -m qpruning.report``
on every set, from the same working directory (run paths in the CSVs are relative to it). Prints a Markdown table:
per set, the files and how many differ; exit status 1 if any differs. In ``index.md`` only the generation time, the output
folder and the checkout's paper-numbers folder are masked. PNGs are compared as bytes too (matplotlib draws the same bytes run to run here).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

FABRICATE = """
import sys
sys.path.insert(0, {tests!r})
from fabricate_runs import fabricate_sweep, smollm2_sweep, throughput_csv
root = {root!r}
fabricate_sweep(root + "/sweep")
fabricate_sweep(root + "/full", full=True)
smollm2_sweep(root + "/smollm2", budgets=(1/64, 1/32, 1/16), niah="niah_fig2")
smollm2_sweep(root + "/one_mode", compat=("methods",), budgets=(1/64, 1/32, 1/16), rotation=False)
throughput_csv(root + "/throughput.csv")
"""


def report_sets(inputs: Path, real: list[Path]) -> dict[str, list[str]]:
    """``{set name: the report's arguments}``."""
    throughput = ["--throughput", str(inputs / "throughput.csv")]
    sets = {
        "sweep": [str(inputs / "sweep"), *throughput],
        "full": [str(inputs / "full"), *throughput],
        "smollm2": [str(inputs / "smollm2")],
        "one_mode": [str(inputs / "one_mode"), "--no-paper"],
        "mixed": [str(inputs / "sweep"), str(inputs / "smollm2")],
    }
    if real:
        sets["real"] = [str(p) for p in real]
    return sets


def build(checkout: Path, args: list[str], out: Path, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONDONTWRITEBYTECODE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "qpruning.report", *args, "--out", str(out)], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"report with {checkout} failed:\n{done.stderr[-3000:]}")


def masked(data: bytes, out: Path, checkout: Path) -> bytes:
    data = data.replace(str(out).encode(), b"OUT").replace(str(checkout / "results" / "paper").encode(), b"PAPER")
    return re.sub(rb"Generated \S+", b"Generated TIME", data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--work", type=Path, default=None, help="where inputs and reports go (default: a temp dir)")
    parser.add_argument("--real", type=Path, action="append", default=[], help="a real result folder to add")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="compare_reports_"))
    inputs = work / "inputs"
    code = FABRICATE.format(tests=str(args.after.resolve() / "tests" / "report"), root=str(inputs))
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(args.after)})
    print("| set | files | differ |")
    print("|---|---:|---:|")
    bad = 0
    for name, report_args in report_sets(inputs, [p.resolve() for p in args.real]).items():
        outs = {}
        for tag, checkout in (("before", args.before.resolve()), ("after", args.after.resolve())):
            outs[tag] = work / f"{tag}_{name}"
            build(checkout, report_args, outs[tag], cwd=work)
        files = sorted(p.relative_to(outs["before"]) for p in outs["before"].rglob("*") if p.is_file())
        after = sorted(p.relative_to(outs["after"]) for p in outs["after"].rglob("*") if p.is_file())
        differ = sorted(set(files) ^ set(after))
        for rel in sorted(set(files) & set(after)):
            x, y = (outs["before"] / rel).read_bytes(), (outs["after"] / rel).read_bytes()
            if rel.name == "index.md":
                x = masked(x, outs["before"], args.before.resolve())
                y = masked(y, outs["after"], args.after.resolve())
            if x != y:
                differ.append(rel)
        bad += len(differ)
        shown = f" ({', '.join(map(str, differ[:5]))})" if differ else ""
        print(f"| {name} | {len(files)} | {len(differ)}{shown} |")
    print(f"\nwork folder: {work}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
