"""Kill a small sweep at random moments (SIGKILL), restart it each time, and compare with an uninterrupted run.

    python scripts/crash_test.py --kills 20 --out results/reliability/crash_test.md

The sweep runs ``run.py -m`` on ``model=tiny_llama`` (a few configurations x a few NIAH samples). A reference
sweep runs once without interruption; then the same sweep is started in another folder and killed, with its
whole process group, after a random delay, again and again, until ``--kills`` kills; each restart resumes it.
When a round finishes before enough kills, another round starts in a fresh folder. Every round is then compared
with the reference, run folder by run folder: no sample lost, none duplicated, every sample's prediction and
score identical, ``metrics.json`` identical in score, samples and bytes. The table goes to ``--out`` (Markdown).
Exit status 0 when every round matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = [
    "-m", "model=tiny_llama", "pruner=snapkv,streamingllm", "bits=4,16", "benchmark=niah_small",
    "benchmark.lengths=[400,600]", "benchmark.depths=[0,100]", "budget=null", "tokens=128",
    "experiment_name=crash",
]
COMPARED_RECORD = ("prediction", "score", "input_tokens", "kept_tokens", "kv_bytes", "kv_bytes_full", "status")
COMPARED_METRICS = ("score", "samples", "failed", "kv_bytes", "kv_bytes_full", "tokens_effective", "task_scores")


@dataclass
class Kill:
    round: int
    after_s: float
    lines_before: int
    lines_after: int


@dataclass
class Round:
    number: int
    root: Path
    kills: int = 0
    restarts: int = 0
    rejected_lines: int = 0
    problems: list[str] = field(default_factory=list)
    samples: int = 0


def sweep_command(root: Path) -> list[str]:
    return [sys.executable, "run.py", *SWEEP, f"output_root={root}"]


def env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def prediction_lines(root: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in root.rglob("predictions.jsonl"))


def run_to_end(root: Path) -> None:
    proc = subprocess.run(sweep_command(root), cwd=REPO, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"crash_test: the sweep failed in {root}:\n{proc.stderr[-3000:]}")


def runs(root: Path) -> dict[str, Path]:
    base = root / "sweeps" / "crash"
    return {str(p.parent.relative_to(base)): p.parent for p in base.rglob("predictions.jsonl")}


def compare(reference: Path, round_: Round) -> None:
    ref_runs, our_runs = runs(reference), runs(round_.root)
    if set(ref_runs) != set(our_runs):
        round_.problems.append(f"run folders differ: {sorted(set(ref_runs) ^ set(our_runs))}")
    for name, ref_dir in ref_runs.items():
        ours = our_runs.get(name)
        if ours is None:
            continue
        mine = [json.loads(line) for line in (ours / "predictions.jsonl").read_text().splitlines()]
        theirs = {r["id"]: r for r in map(json.loads, (ref_dir / "predictions.jsonl").read_text().splitlines())}
        ids = [r["id"] for r in mine]
        round_.samples += len(ids)
        if len(ids) != len(set(ids)):
            round_.problems.append(f"{name}: duplicated samples {sorted({i for i in ids if ids.count(i) > 1})}")
        if set(ids) != set(theirs):
            round_.problems.append(f"{name}: lost {sorted(set(theirs) - set(ids))}, extra {sorted(set(ids) - set(theirs))}")
        for record in mine:
            other = theirs.get(record["id"])
            if other and any(record.get(k) != other.get(k) for k in COMPARED_RECORD):
                round_.problems.append(f"{name}: sample {record['id']} differs from the reference")
        m_ours, m_ref = (json.loads((d / "metrics.json").read_text()) for d in (ours, ref_dir))
        for key in COMPARED_METRICS:
            if m_ours.get(key) != m_ref.get(key):
                round_.problems.append(f"{name}: metrics.json {key} {m_ours.get(key)} != {m_ref.get(key)}")
        rejected = ours / "predictions.jsonl.rejected"
        if rejected.exists():
            round_.rejected_lines += len(rejected.read_bytes().splitlines())


def kill_rounds(work: Path, kills: int, low: float, high: float, rng: random.Random) -> tuple[list[Round], list[Kill]]:
    rounds: list[Round] = []
    log: list[Kill] = []
    while sum(r.kills for r in rounds) < kills:
        round_ = Round(len(rounds) + 1, work / f"killed-{len(rounds) + 1}")
        rounds.append(round_)
        while True:
            round_.restarts += 1
            before = prediction_lines(round_.root)
            proc = subprocess.Popen(sweep_command(round_.root), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            delay = rng.uniform(low, high)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                round_.kills += 1
                log.append(Kill(round_.number, round(delay, 1), before, prediction_lines(round_.root)))
                print(f"kill {len(log)}: round {round_.number} after {delay:.1f}s, prediction lines {before} -> "
                      f"{log[-1].lines_after}", flush=True)
                if sum(r.kills for r in rounds) >= kills:
                    break
                continue
            if proc.returncode != 0:
                raise SystemExit(f"crash_test: the sweep exited {proc.returncode} in {round_.root}")
            break  # the round finished between kills
        run_to_end(round_.root)  # finish (or confirm) the last restart without a kill
    return rounds, log


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPU cores ({cpu}), no GPU used"


def write_table(out: Path, command: str, reference_s: float, rounds: list[Round], log: list[Kill]) -> str:
    ok = all(not r.problems for r in rounds)
    lines = [
        "# Crash test: random SIGKILLs through a sweep, compared with an uninterrupted run",
        "",
        f"- command: `{command}`",
        f"- sweep: `python run.py {' '.join(shlex.quote(a) for a in SWEEP)}` (4 configurations x 4 samples)",
        f"- machine: {machine()}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- reference sweep (no kill): {reference_s:.0f} s",
        f"- result: {sum(r.kills for r in rounds)} kills, "
        + ("**every round identical to the reference** (no sample lost or duplicated, identical predictions, "
           "scores and metrics)" if ok else "**differences found** (see below)"),
        "",
        "| round | kills | restarts | samples compared | lost / duplicated / different | cut lines set aside | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        lines.append(f"| {r.number} | {r.kills} | {r.restarts} | {r.samples} | "
                     f"{'0 / 0 / 0' if not r.problems else len(r.problems)} | {r.rejected_lines} | "
                     f"{'identical' if not r.problems else '; '.join(r.problems)} |")
    lines += ["", "Each kill (the delay after the restart; prediction lines of the round before and after it):", "",
              "| kill | round | after (s) | lines before | lines after |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {k.round} | {k.after_s} | {k.lines_before} | {k.lines_after} |" for i, k in enumerate(log, 1)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in all (default 20)")
    parser.add_argument("--min-delay", type=float, default=15.0, help="shortest time before a kill, seconds")
    parser.add_argument("--max-delay", type=float, default=60.0, help="longest time before a kill, seconds")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill delays")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "reliability" / "crash_test.md")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.kills < 1 or not 0 < args.min_delay <= args.max_delay:
        parser.error("--kills must be >= 1 and 0 < --min-delay <= --max-delay")
    command = "python scripts/crash_test.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    work = args.work or Path(tempfile.mkdtemp(prefix="qpruning-crash-"))
    started = time.time()
    run_to_end(work / "reference")
    reference_s = time.time() - started
    print(f"reference sweep: {reference_s:.0f} s", flush=True)
    rounds, log = kill_rounds(work, args.kills, args.min_delay, args.max_delay, random.Random(args.seed))
    for round_ in rounds:
        compare(work / "reference", round_)
    print(write_table(args.out, command, reference_s, rounds, log))
    return 0 if all(not r.problems for r in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
