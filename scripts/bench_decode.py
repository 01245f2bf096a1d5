#!/usr/bin/env python
"""Decode-step attention of one decoder layer: 16-bit SDPA, dequantize + SDPA, and the fused kernel (issue #7).

For each batch size and each 16-bit length T, on the Llama-3-8B layer shape (32 query heads, 8 KV heads,
head_dim 128) in bfloat16, one decode step (one query token) is timed for:

- ``sdpa16``: ``F.scaled_dot_product_attention`` over T tokens held in 16 bits (the 1x16 setting);
- ``dequant_sdpa``: the 4-bit cache of ``16/bits * T`` tokens (KIVI, groups of 64) dequantized whole to
  bfloat16, then SDPA over it: what transformers' quantized caches do every step (equal memory to ``sdpa16``);
- ``fused``: :func:`qpruning.backends.triton.launch.attend_segments` over the same packed cache, read in place;
- ``fused16``: the same kernel over the T 16-bit tokens (its 16-bit path, against SDPA).

The *memory floor* of a method is the bytes the cache holds (codes, scales and zeros included) divided by the
bandwidth measured on this machine (a large device-to-device copy, read + write bytes over time). Timings are
medians of ``--iters`` CUDA-event timings after ``--warmup`` calls, with the L2 cache flushed before each timed
call (``--no-flush`` to keep it). Output: ``<out>.csv`` (one row per method and shape) and ``<out>.md`` (the
issue's table), with the command, the device and the date.

    python scripts/bench_decode.py                                   # on a GPU: results/bench/decode-<gpu>.*
    python scripts/bench_decode.py --batch 1 16 64 --tokens 512 2048 8192
    TRITON_INTERPRET=1 python scripts/bench_decode.py --device cpu --small   # CPU smoke run (not a result)

On a CPU, the fused kernel runs only under Triton's interpreter (``--interpret`` or ``TRITON_INTERPRET=1``);
CPU timings check that the script works and mean nothing about GPU speed.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("sdpa16", "dequant_sdpa", "fused", "fused16")
LABELS = {
    "sdpa16": "16-bit SDPA (T)",
    "dequant_sdpa": "dequantize + SDPA",
    "fused": "fused kernel",
    "fused16": "fused kernel, 16-bit (T)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--small", action="store_true", help="tiny shapes for a CPU smoke run")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="default 1 16 64 (--small: 1 2)")
    parser.add_argument(
        "--tokens", type=int, nargs="+", default=None, help="16-bit lengths T (default 512 2048 8192; --small: 64 128)"
    )
    parser.add_argument("--q-heads", type=int, default=None, help="default 32 (--small: 4)")
    parser.add_argument("--kv-heads", type=int, default=None, help="default 8 (--small: 2)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--bits", type=int, default=4, choices=(2, 4, 8))
    parser.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128))
    parser.add_argument("--quant", default="kivi", choices=("kivi", "flexgen"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--warmup", type=int, default=None, help="default 10 (--small: 1)")
    parser.add_argument("--iters", type=int, default=None, help="default 50 (--small: 3)")
    parser.add_argument("--no-flush", action="store_true", help="do not flush the L2 cache between timed calls")
    parser.add_argument("--copy-mib", type=int, default=None, help="size of the bandwidth copy (default 2048; CPU 256)")
    parser.add_argument("--split-tokens", type=int, default=None, help="force the fused kernel's tokens per split")
    parser.add_argument("--fold-k", action="store_true", help="fused kernel: fold KIVI key scales into the query")
    parser.add_argument("--block-n", type=int, default=64, help="fused kernel: tokens per block")
    parser.add_argument("--num-warps", type=int, default=None, help="fused kernel: warps (default: heuristic)")
    parser.add_argument("--maxnreg", type=int, default=None, help="fused kernel: register cap (0: none)")
    parser.add_argument("--interpret", action="store_true", help="set TRITON_INTERPRET=1 (CPU: run the kernel)")
    parser.add_argument("--out", default=None, help="output prefix (default results/bench/decode-<device>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads on a CPU (default 1: steadier)")
    args = parser.parse_args(argv)
    small = args.small
    args.batch = args.batch or ([1, 2] if small else [1, 16, 64])
    args.tokens = args.tokens or ([64, 128] if small else [512, 2048, 8192])
    args.q_heads = args.q_heads or (4 if small else 32)
    args.kv_heads = args.kv_heads or (2 if small else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if small else 10)
    args.iters = args.iters if args.iters is not None else (3 if small else 50)
    return args


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Timer:
    """Medians of per-call timings: CUDA events on a GPU (L2 flushed before each call), perf_counter on a CPU."""

    def __init__(self, torch, device, warmup: int, iters: int, flush: bool) -> None:
        self.torch, self.device, self.warmup, self.iters = torch, device, warmup, iters
        self.cuda = device.type == "cuda"
        self.flush_buffer = None
        if self.cuda and flush:
            # Larger than any L2 (50 MB on an H100): writing it evicts the cache under test.
            self.flush_buffer = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)

    def __call__(self, fn) -> tuple[float, float, float]:
        """``(median, p10, p90)`` in microseconds."""
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            pairs = []
            for _ in range(self.iters):
                if self.flush_buffer is not None:
                    self.flush_buffer.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                pairs.append((start, end))
            torch.cuda.synchronize(self.device)
            times = [s.elapsed_time(e) * 1e3 for s, e in pairs]
        else:
            times = []
            for _ in range(self.iters):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e6)
        times.sort()
        q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
        return statistics.median(times), q[0], q[-1]


def measure_bandwidth(torch, device, timer: Timer, mib: int) -> float:
    """Bytes per second of a large device-to-device copy (bytes read + bytes written over the time)."""
    n = mib * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    median_us, _, _ = timer(lambda: dst.copy_(src))
    return 2 * n / (median_us * 1e-6)


def quantize_rows(torch, quantizer, rows: int, length: int, head_dim: int, dtype, device, seed: int):
    """Keys and values of ``rows`` rows of ``length`` random tokens, quantized a few rows at a time (memory)."""
    from qpruning.cache.quantized import QuantizedTensor

    gen = torch.Generator(device=device).manual_seed(seed)
    chunk = max(1, (1 << 25) // max(1, length * head_dim))  # ~32M numbers per chunk
    parts_k, parts_v = [], []
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start) * length
        k = torch.randn(n, head_dim, generator=gen, device=device, dtype=torch.float32).to(dtype)
        v = torch.randn(n, head_dim, generator=gen, device=device, dtype=torch.float32).to(dtype)
        parts_k.append(quantizer.quantize_keys(k, dtype))
        parts_v.append(quantizer.quantize_values(v, dtype))
        del k, v

    def cat(parts):
        first = parts[0]
        return QuantizedTensor(
            torch.cat([p.packed for p in parts]), torch.cat([p.scale for p in parts]),
            torch.cat([p.zero for p in parts]), first.bits, first.group_size, first.axis, first.head_dim,
        )

    return cat(parts_k), cat(parts_v)


def measure_shape(torch, ctx: dict, batch: int, t16: int) -> list[dict]:
    """Build the 16-bit and quantized caches of one shape, check the kernel, time every method."""
    import torch.nn.functional as F

    from qpruning.cache.segments import Segment

    args, device, dtype, timer = ctx["args"], ctx["device"], ctx["dtype"], ctx["timer"]
    attend_segments, methods, bandwidth = ctx["attend_segments"], ctx["methods"], ctx["bandwidth"]
    hq, hkv, d = args.q_heads, args.kv_heads, args.head_dim
    scaling = d**-0.5
    tq = (16 // args.bits) * t16
    rows = batch * hkv
    q = torch.randn(batch, hq, 1, d, device=device, dtype=dtype)
    try:
        k16 = torch.randn(batch, hkv, t16, d, device=device, dtype=dtype)
        v16 = torch.randn(batch, hkv, t16, d, device=device, dtype=dtype)
        keys, values = quantize_rows(torch, ctx["quantizer"], rows, tq, d, dtype, device, args.seed + t16)
    except torch.OutOfMemoryError:
        print(f"batch {batch}, T {t16}: out of memory building the caches; skipped", flush=True)
        return []
    lengths = torch.full((rows,), tq, dtype=torch.int32, device=device)
    quantized = Segment(keys, values, lengths, tq)
    plain = Segment(k16.view(-1, d), v16.view(-1, d), torch.full_like(lengths, t16), t16)
    bytes16 = 2 * k16.numel() * k16.element_size()
    bytesq = sum(quantized.nbytes()[kind] for kind in ("packed", "scales", "zeros"))
    options = {
        "split_tokens": args.split_tokens, "fold_k": args.fold_k, "block_n": args.block_n,
        "num_warps": args.num_warps, "maxnreg": args.maxnreg,
    }

    def sdpa16():
        return F.scaled_dot_product_attention(q, k16, v16, scale=scaling, enable_gqa=True)

    def dequant_sdpa():
        k = keys.dequantize(dtype).view(batch, hkv, tq, d)
        v = values.dequantize(dtype).view(batch, hkv, tq, d)
        return F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=True)

    def fused():
        return attend_segments([quantized], q, scaling, **options)

    def fused16():
        return attend_segments([plain], q, scaling, **options)

    fns = {"sdpa16": sdpa16, "dequant_sdpa": dequant_sdpa, "fused": fused, "fused16": fused16}
    held = {"sdpa16": bytes16, "fused16": bytes16, "dequant_sdpa": bytesq, "fused": bytesq}
    tokens = {"sdpa16": t16, "fused16": t16, "dequant_sdpa": tq, "fused": tq}
    check = {}
    with torch.no_grad():
        if "fused" in methods:
            check["fused"] = relative_error(fused(), dequant_sdpa().transpose(1, 2))
        if "fused16" in methods:
            check["fused16"] = relative_error(fused16(), sdpa16().transpose(1, 2))
    results = {}
    for method in methods:
        try:
            with torch.no_grad():
                results[method] = timer(fns[method])
        except torch.OutOfMemoryError:
            results[method] = (math.nan, math.nan, math.nan)
            print(f"batch {batch}, T {t16}, {method}: out of memory", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    sdpa_us = results.get("sdpa16", (math.nan,))[0]
    out = []
    for method in methods:
        median, p10, p90 = results[method]
        floor = held[method] / bandwidth * 1e6
        quant = method in ("dequant_sdpa", "fused")
        out.append(
            {
                "batch": batch,
                "tokens_16bit": t16,
                "method": method,
                "tokens": tokens[method],
                "bits": args.bits if quant else 16,
                "quant": args.quant if quant else "",
                "group_size": args.group_size if quant else "",
                "median_us": round(median, 2),
                "p10_us": round(p10, 2),
                "p90_us": round(p90, 2),
                "bytes_held": held[method],
                "floor_us": round(floor, 2),
                "x_floor": round(median / floor, 3),
                "x_sdpa16": round(median / sdpa_us, 3) if sdpa_us == sdpa_us else "",
                "rel_err": f"{check[method]:.2e}" if method in check else "",
            }
        )
        print(
            f"batch {batch:4d}  T {t16:6d}  {method:13s} {tokens[method]:7d} tokens  {median:10.1f} us  "
            f"floor {floor:9.1f} us  x{median / floor:6.2f}",
            flush=True,
        )
    return out


def relative_error(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
    import torch

    from qpruning.backends.triton import interpreting
    from qpruning.cache.quantizers import KIVI, FlexGen

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    if not on_gpu:
        torch.set_num_threads(args.cpu_threads)
    fused_ok = (on_gpu and not interpreting()) or (not on_gpu and interpreting())
    kernel_note = ""
    if not fused_ok:
        kernel_note = "fused kernel skipped: no GPU and Triton's interpreter is off (set TRITON_INTERPRET=1)"
        if on_gpu:
            kernel_note = "fused kernel skipped: TRITON_INTERPRET is set on a GPU machine"
    attend_segments = None
    if fused_ok:
        try:
            from qpruning.backends.triton.launch import attend_segments
        except ImportError as error:  # no Triton
            fused_ok, kernel_note = False, f"fused kernel skipped: {error}"
    methods = [m for m in args.methods if fused_ok or not m.startswith("fused")]

    dtype = torch.bfloat16
    torch.manual_seed(args.seed)
    name = torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.processor() or platform.machine()})"
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and "TRITON_INTERPRET" not in command:
        command = "TRITON_INTERPRET=1 " + command
    out = Path(args.out or f"results/bench/decode-{'cpu-smoke' if not on_gpu else slug(name)}")
    timer = Timer(torch, device, args.warmup, args.iters, flush=not args.no_flush)
    bandwidth = measure_bandwidth(torch, device, timer, args.copy_mib or (2048 if on_gpu else 256))
    print(f"{name}: copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)

    ctx = {
        "args": args, "device": device, "dtype": dtype, "timer": timer, "bandwidth": bandwidth,
        "attend_segments": attend_segments, "methods": methods,
        "quantizer": (KIVI if args.quant == "kivi" else FlexGen)(bits=args.bits, group_size=args.group_size),
    }
    rows_out = []
    for batch in args.batch:
        for t16 in args.tokens:
            rows_out += measure_shape(torch, ctx, batch, t16)
            if on_gpu:
                torch.cuda.empty_cache()
    hq, hkv, d = args.q_heads, args.kv_heads, args.head_dim

    common = {
        "device": name,
        "q_heads": hq,
        "kv_heads": hkv,
        "head_dim": d,
        "dtype": "bfloat16",
        "bandwidth_gbps": round(bandwidth / 1e9, 1),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "interpreter": interpreting(),
        "command": command,
        "date": date,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = [*rows_out[0].keys(), *common.keys()] if rows_out else list(common)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows_out:
            writer.writerow({**row, **common})
    out.with_suffix(".md").write_text(markdown(rows_out, common, args, on_gpu, kernel_note))
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.md')}")
    return 0


def _version(package: str) -> str:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001 - not installed
        return ""


def markdown(rows: list[dict], common: dict, args, on_gpu: bool, note: str) -> str:
    ratio = 16 // args.bits
    lines = [f"# Decode-step attention, one layer ({common['device']})", ""]
    if not on_gpu:
        lines += [
            "**CPU smoke run: it shows that the benchmark runs, not how fast anything is.** "
            + ("The fused kernel ran under Triton's interpreter (Python), thousands of times slower than on a GPU."
               if common["interpreter"] else ""),
            "",
        ]
    lines += [
        f"- command: `{common['command']}`",
        f"- device: {common['device']}; date: {common['date']}; torch {common['torch']}, triton {common['triton']}",
        f"- layer: {common['q_heads']} query heads, {common['kv_heads']} KV heads, head_dim {common['head_dim']}, "
        f"bfloat16; one decode step (one query token)",
        f"- quantized cache: {args.quant} {args.bits}-bit, groups of {args.group_size}, {ratio}x the 16-bit tokens "
        "(equal memory, scales and zeros aside)",
        f"- memory floor: bytes held / {common['bandwidth_gbps']} GB/s (a large device copy measured here)",
        f"- timings: median of {args.iters} calls after {args.warmup} warmup"
        + (", L2 flushed before each call" if on_gpu and not args.no_flush else ""),
    ]
    if note:
        lines.append(f"- {note}")
    lines.append("")
    by_shape: dict[tuple[int, int], dict[str, dict]] = {}
    for row in rows:
        by_shape.setdefault((row["batch"], row["tokens_16bit"]), {})[row["method"]] = row
    methods = [m for m in METHODS if any(m in v for v in by_shape.values())]
    header = ["batch", "T (16-bit)"]
    for m in methods:
        header.append(f"{LABELS[m]}" + ("" if m in ("sdpa16", "fused16") else f" ({ratio}T at {args.bits}-bit)"))
    header += ["floor 16-bit", f"floor {args.bits}-bit"]
    if "fused" in methods:
        header += ["fused / floor", "fused / 16-bit SDPA"]
    if "dequant_sdpa" in methods and "sdpa16" in methods:
        header.append("dequant+SDPA / 16-bit SDPA")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (batch, t16), cells in sorted(by_shape.items()):
        row = [str(batch), str(t16)]
        for m in methods:
            row.append(f"{cells[m]['median_us']:.1f} us" if m in cells else "")
        any_row = next(iter(cells.values()))
        f16 = next((c["floor_us"] for c in cells.values() if c["bits"] == 16), math.nan)
        fq = next((c["floor_us"] for c in cells.values() if c["bits"] != 16), math.nan)
        row += [f"{f16:.1f} us", f"{fq:.1f} us"]
        if "fused" in methods:
            fused = cells.get("fused")
            row += [f"{fused['x_floor']:.2f}x", f"{fused['x_sdpa16']}x"] if fused else ["", ""]
        if "dequant_sdpa" in methods and "sdpa16" in methods:
            row.append(f"{cells['dequant_sdpa']['x_sdpa16']}x")
        del any_row
        lines.append("| " + " | ".join(row) + " |")
    errors = [f"{r['method']} b{r['batch']} T{r['tokens_16bit']}: {r['rel_err']}" for r in rows if r["rel_err"]]
    if errors:
        lines += ["", "Relative error of the fused kernel against dequantize + SDPA (and fused16 against SDPA): "
                  + "; ".join(errors) + "."]
    lines += [
        "",
        "Goals (issue #7): fused at 4-bit within 1.3x of its memory floor for batch >= 16 and T >= 2048, and no "
        "slower than 16-bit SDPA at equal memory.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
