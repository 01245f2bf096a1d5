#!/usr/bin/env python
"""A 12-configuration sweep, one by one (``hydra/launcher=basic``), grouped (the default launcher of ``-m``: one
prefill per sample), and grouped with batched decoding (``hydra.launcher.batch_decode=true``).

The grid of issue 15: SnapKV and PyramidKV x token-precision 1x16, 2x8, 4x4 (bits 16, 8, 4: the same memory buys
1, 2 or 4 times the tokens) x budgets 1/32 and 1/16, on SmolLM2-135M and ``benchmark=niah_small``. Each launcher
runs the whole grid as one ``python run.py -m`` command, timed from start to exit (model loads, prefills, decoding
and Hydra's own work included), into its own fresh output folder. The predictions of the grouped runs are compared
with the one-by-one runs' record by record (everything but the timings). Output: ``<out>/README.md`` with the
command, the machine, the date, the wall times, the speed-ups and the comparisons.

    python scripts/bench_sweep.py                      # the whole niah_small grid (9 samples per configuration)
    python scripts/bench_sweep.py --limit 3            # the first 3 samples of each configuration
    python scripts/bench_sweep.py --override 'benchmark.depths=[50]'   # one sample per length (1000, 2000, 3500)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = ["pruner=snapkv,pyramidkv", "bits=16,8,4", "budget=0.03125,0.0625"]
BASE = ["model=smollm2_135m", "benchmark=niah_small"]
LAUNCHERS = {"basic": ["hydra/launcher=basic"], "grouped": [], "grouped_batched": ["hydra.launcher.batch_decode=true"]}
LABELS = {"basic": "basic (one by one)", "grouped": "grouped (the default of -m)",
          "grouped_batched": "grouped, batch_decode=true"}
TIMINGS = ("seconds",)


def sweep(launcher: str, root: Path, limit: int | None, extra: list[str]) -> tuple[float, list[str]]:
    """Run the grid with ``launcher`` into ``root``; returns (wall seconds, the command)."""
    command = [sys.executable, "run.py", "-m", *GRID, *BASE, *extra, *LAUNCHERS[launcher], f"output_root={root}"]
    if limit is not None:
        command.append(f"limit={limit}")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return seconds, command


def records(root: Path) -> dict[str, list[dict]]:
    """Each run folder's predictions (timings left out), by folder relative to ``root``."""
    out = {}
    for path in sorted(root.rglob("predictions.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[str(path.parent.relative_to(root))] = [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]
    return out


def machine() -> str:
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:  # pragma: no cover
        device = "torch not importable"
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, {device}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="samples per configuration (default: all)")
    parser.add_argument("--override", action="append", default=[], help="an extra override of every job")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "sweep")
    parser.add_argument("--note", default="", help="a line about the conditions (a busy machine...)")
    args = parser.parse_args(argv)

    times, commands, found = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        for launcher in LAUNCHERS:
            times[launcher], commands[launcher] = sweep(launcher, Path(tmp) / launcher, args.limit, args.override)
            found[launcher] = records(Path(tmp) / launcher)
            print(f"{launcher}: {times[launcher]:.1f} s, {len(found[launcher])} runs", flush=True)
    basic = found["basic"]
    if len(basic) != 12 or any(sorted(basic) != sorted(runs) for runs in found.values()):
        raise SystemExit(f"expected the same 12 run folders from every launcher, got {[len(f) for f in found.values()]}")
    samples = sum(len(rows) for rows in basic.values())

    def shown(command: list[str]) -> str:
        return shlex.join(["python", *command[1:]]).replace(str(Path(tempfile.gettempdir())), "$TMP")

    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# A 12-configuration sweep: one by one vs grouped (one prefill per sample)",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- Command: `{shlex.join(['python', 'scripts/bench_sweep.py', *(argv if argv is not None else sys.argv[1:])])}`,"
        " which runs",
        *[f"  - {launcher}: `{shown(commands[launcher])}`" for launcher in LAUNCHERS],
        f"- Samples per configuration: {samples // 12} ({'limit=' + str(args.limit) if args.limit else 'all'})",
        *([f"- Note: {args.note}"] if args.note else []),
        "",
        "| launcher | wall time (s) | speed-up | records identical to one by one (apart from timings) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for launcher in LAUNCHERS:
        same = sum(a == b for folder in basic for a, b in zip(basic[folder], found[launcher][folder]))
        lines.append(f"| {LABELS[launcher]} | {times[launcher]:.1f} | {times['basic'] / times[launcher]:.2f} | "
                     f"{same} of {samples} |")
    lines += ["", "Records compared: prediction, score, kept tokens, kv_bytes, every field but `seconds`.", ""]
    (args.out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
