#!/usr/bin/env python
"""CPU decode cost per token through a compressed cache vs the uncompressed ``DynamicCache`` (issue 15, item 1).

SmolLM2-135M (embedded, float32) on a prompt of ``--tokens`` tokens of Paul Graham's essays: for each
configuration and length, one prefill (not timed); then, in each round, ``--new-tokens`` greedy decode steps (the
model's forward on the last token) from a fresh copy of that cache, timed together; ms/token is their time
divided by their number. Configurations
are interleaved round by round so that a busy machine slows them alike, and the median over ``--rounds`` is
reported with the ratio to the uncompressed cache at the same length. Configurations: uncompressed
``DynamicCache``; SnapKV + KIVI (groups of 64) 1x16, 2x8 and 4x4 at ``--budget`` of an 8k 16-bit cache.

    python scripts/bench_decode_cpu.py --tokens 3500 7000 --rounds 3 --threads 2
    python scripts/bench_decode_cpu.py --tokens 3500 7000 --label after   # writes decode_cpu_after.{csv,md}
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qpruning import KIVI, KVCompressor, SnapKV  # noqa: E402
from qpruning.models import ModelSpec  # noqa: E402
from qpruning.transformers_api import cache_kwargs  # noqa: E402

UNCOMPRESSED = "uncompressed (DynamicCache)"


def configurations(budget: float) -> list[tuple[str, KVCompressor | None]]:
    def snapkv(bits: int) -> KVCompressor:
        return KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=bits, group_size=64), budget=budget)

    return [(UNCOMPRESSED, None), ("SnapKV 1x16", snapkv(16)), ("SnapKV 2x8", snapkv(8)), ("SnapKV 4x4", snapkv(4))]


def prompt_ids(tokenizer, length: int) -> torch.Tensor:
    from scripts.measure_prefill import prompt_ids as essay_prompt

    ids = essay_prompt(tokenizer, length)
    if ids.shape[1] < length:
        raise SystemExit(f"the essays hold only {ids.shape[1]} tokens; ask for --tokens <= {ids.shape[1]}")
    return ids


def prefill(model, ids: torch.Tensor, compressor: KVCompressor | None):
    """The cache after prefilling ``ids`` (not timed), and the first generated token."""
    from transformers import DynamicCache

    with compressor.attach(model) if compressor is not None else contextlib.nullcontext():
        cache = DynamicCache(config=model.config) if compressor is None else compressor.new_cache(model)
        out = model(ids, **cache_kwargs(model, cache), logits_to_keep=1)
    return cache, out.logits[:, -1].argmax(-1, keepdim=True)


def decode(model, cache, token: torch.Tensor, compressor: KVCompressor | None, steps: int) -> tuple[float, list[int]]:
    """``steps`` greedy decode steps from ``token`` through ``cache``; returns (seconds, tokens)."""
    tokens = [int(token)]
    with compressor.attach(model) if compressor is not None else contextlib.nullcontext():
        start = time.perf_counter()
        for _ in range(steps):
            out = model(token, **cache_kwargs(model, cache))
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(token))
        seconds = time.perf_counter() - start
    return seconds, tokens


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "qpruning"], capture_output=True, text=True)
        return head.stdout.strip() + (" (+ uncommitted changes in qpruning/)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[3500, 7000], help="prompt lengths")
    parser.add_argument("--budget", type=float, default=1 / 32, help="memory budget fraction of an 8k 16-bit cache")
    parser.add_argument("--new-tokens", type=int, default=32, help="timed greedy decode steps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label", default="before", help="output name: decode_cpu_<label>.{csv,md}")
    parser.add_argument("--out", type=Path, default=Path("results/bench/decode_cpu"))
    parser.add_argument("--code", default=None, help="code version to record (default: git commit)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    code = args.code or git_commit()
    load_start = os.getloadavg()

    model, tokenizer = ModelSpec(name="smollm2_135m", name_or_path="embedded:smollm2_135m").load()
    configs = configurations(args.budget)
    prompts = {n: prompt_ids(tokenizer, n) for n in args.tokens}
    times: dict[tuple[int, str], list[float]] = {(n, name): [] for n in args.tokens for name, _ in configs}
    outputs: dict[tuple[int, str], list[int]] = {}
    kv_bytes: dict[tuple[int, str], int] = {}
    with torch.inference_mode():
        # Length by length (each written out when done): one prefill per configuration, then every round
        # decodes each configuration in turn from a fresh copy of its cache.
        for done, n in enumerate(args.tokens, 1):
            prefilled = {}
            for name, compressor in configs:
                prefilled[name] = prefill(model, prompts[n], compressor)
                kv_bytes[(n, name)] = 0 if compressor is None else prefilled[name][0].prefill_summary["kv_bytes"]
            print(f"prefills at {n} tokens done, load {os.getloadavg()}", file=sys.stderr, flush=True)
            for round_ in range(args.rounds):
                for name, compressor in configs:
                    cache, token = prefilled[name]
                    seconds, tokens = decode(model, copy.deepcopy(cache), token, compressor, args.new_tokens)
                    times[(n, name)].append(1000 * seconds / args.new_tokens)
                    outputs[(n, name)] = tokens
                print(f"{n} tokens: round {round_ + 1}/{args.rounds} done, load {os.getloadavg()}", file=sys.stderr,
                      flush=True)
            write(args, args.tokens[:done], configs, times, outputs, kv_bytes, code, load_start)


def write(args, lengths, configs, times, outputs, kv_bytes, code: str, load_start) -> None:
    """The CSV and Markdown files for the lengths measured so far."""
    load_end = os.getloadavg()
    rows = []
    for n in lengths:
        base = statistics.median(times[(n, UNCOMPRESSED)])
        for name, _ in configs:
            median = statistics.median(times[(n, name)])
            rows.append({
                "tokens": n,
                "configuration": name,
                "ms_per_token": round(median, 2),
                "ratio_to_uncompressed": round(median / base, 3),
                "rounds_ms": " ".join(f"{t:.1f}" for t in times[(n, name)]),
                "kv_bytes_after_prefill": kv_bytes[(n, name)],
                "same_tokens_as_uncompressed": outputs[(n, name)] == outputs[(n, UNCOMPRESSED)],
                "tokens_out": " ".join(map(str, outputs[(n, name)])),
            })
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"decode_cpu_{args.label}"
    with stem.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    import transformers

    command = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other agents), no GPU"
    lines = [
        f"# CPU decode ms/token, SmolLM2-135M float32, {args.threads} threads ({args.label})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='minutes')}  ",
        f"torch {torch.__version__}, transformers {transformers.__version__}, code {code}  ",
        f"Load average (1, 5, 15 min) at start {tuple(round(x, 2) for x in load_start)}, "
        f"at end {tuple(round(x, 2) for x in load_end)}  ",
        f"{args.new_tokens} greedy decode steps after an untimed prefill; budget {args.budget:g} of an 8k 16-bit "
        f"cache (1x16 = {int(args.budget * 8192)} tokens); median of {args.rounds} interleaved rounds.",
        "",
        "| prompt tokens | configuration | ms/token | x uncompressed | rounds (ms/token) | KV bytes after prefill |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tokens']} | {r['configuration']} | {r['ms_per_token']:.1f} | {r['ratio_to_uncompressed']:.2f} | "
            f"{r['rounds_ms']} | {r['kv_bytes_after_prefill']:,} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
