#!/usr/bin/env python
"""The paper's Table 4 end to end: decoding throughput and KV memory per batch item, 1x16 vs 2x8 vs 4x4.

At one memory budget (default 1/64 of an 8k 16-bit cache: 128 tokens at 16 bits, 256 at 8, 512 at 4), for
batch 64 / 96 / 128, on the Llama-3-8B and Mistral-7B-v0.2 architectures with *random* weights in bfloat16
(``AutoConfig.for_model`` with the real dimensions; nothing is downloaded), SnapKV pruning + KIVI quantization
(groups of 64) through :class:`qpruning.KVCompressor`: prefill a random prompt (default 2048 tokens), then time
``--steps`` greedy decode steps after ``--warmup-steps`` untimed ones. Throughput = batch x steps / seconds.
``kv_bytes_per_item`` is the measured cache right after prefill (codes, scales, zeros, 16-bit tails), per
batch item. Each setting runs with the fused kernel (``kernel=on``) and with the PyTorch reference path
(``kernel=off``).

``--caches`` adds transformers' own caches at the same memory, with a prompt as long as the budget's tokens
(nothing to prune): ``dynamic`` (``DynamicCache``, the 16-bit settings) and ``hqq`` (``QuantizedCache`` with
the HQQ backend, the quantized settings; it dequantizes its whole cache every step), so that 4x4 through
qpruning's kernel compares with 1x16 in a plain cache and with 4x4 the transformers way.

    python scripts/bench_throughput.py                      # on a GPU: results/bench/throughput-<gpu>.{csv,md}
    python scripts/bench_throughput.py --models mistral_7b_instruct_v02 --batch 64 --steps 128
    python scripts/bench_throughput.py --device cpu --small --interpret   # CPU smoke run (not a result)
    python scripts/bench_throughput.py --models llama3_8b_instruct --bits 16 4 --kernel on \
        --caches qpruning dynamic hqq                       # the GPU check's Table 4 (scripts/gpu_check.py)

Outputs: ``<out>.csv`` (kernel on: the format of ``docs/report.md``'s throughput CSV, which feeds Table 4 through
``python -m qpruning.report ... --throughput <out>.csv``), ``<out>-kernel-off.csv`` (the reference path, same
columns), ``<out>-transformers.csv`` (``--caches dynamic hqq``) and ``<out>.md`` (all side by side). The CSVs are
separate because the report keys a measurement by (model, device, tokens, bits, batch, pruner, quant): kernel on
and off would overwrite each other there.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
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

# The real dimensions (config.json of meta-llama/Meta-Llama-3-8B-Instruct and mistralai/Mistral-7B-Instruct-v0.2).
ARCHITECTURES = {
    "llama3_8b_instruct": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128009,
    ),
    "mistral_7b_instruct_v02": dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=32000,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5, sliding_window=None,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    ),
}
SMALL = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=128, vocab_size=1024)
CSV_COLUMNS = ["model", "tokens", "bits", "batch", "tokens_per_s", "kv_bytes_per_item", "device", "command", "date"]
EXTRA_COLUMNS = ["pruner", "quant", "group_size", "repeats", "kernel", "cache", "prompt", "steps", "seconds",
                 "kv_bytes_per_item_end", "weights", "note"]
CACHES = ("qpruning", "dynamic", "hqq")
CACHE_LABELS = {"dynamic": "DynamicCache", "hqq": "QuantizedCache(HQQ)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--small", action="store_true", help="tiny models and batches for a CPU smoke run")
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="default 64 96 128 (--small: 2 4)")
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 8, 4], choices=(2, 4, 8, 16))
    parser.add_argument("--budget", type=float, default=1 / 64, help="fraction of the full 16-bit cache")
    parser.add_argument(
        "--full-cache-tokens", type=int, default=None, help="the full cache of the budget (default 8192; --small 2048)"
    )
    parser.add_argument("--group-size", type=int, default=None, help="KIVI group size (default 64; --small 32)")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 2048; --small 256)")
    parser.add_argument("--steps", type=int, default=None, help="timed decode steps (default 64; --small 4)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed decode steps (default 4; --small 1)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the median is written)")
    parser.add_argument("--kernel", nargs="+", default=["on", "off"], choices=("on", "off"))
    parser.add_argument(
        "--caches", nargs="+", default=["qpruning"], choices=CACHES,
        help="qpruning (SnapKV + KIVI, the kernel settings above); dynamic: transformers' DynamicCache at the "
        "16-bit settings; hqq: transformers' QuantizedCache (HQQ) at the quantized ones (default: qpruning)",
    )
    parser.add_argument("--hqq-axis", type=int, default=1, choices=(0, 1), help="HQQ's grouping axis (keys, values)")
    parser.add_argument("--interpret", action="store_true", help="CPU: run the fused kernel under Triton's interpreter")
    parser.add_argument("--out", default=None, help="output prefix (default results/bench/throughput-<device>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads on a CPU (default 1: steadier)")
    args = parser.parse_args(argv)
    small = args.small
    args.batch = args.batch or ([2, 4] if small else [64, 96, 128])
    args.full_cache_tokens = args.full_cache_tokens or (2048 if small else 8192)
    args.group_size = args.group_size or (32 if small else 64)
    args.prompt = args.prompt or (256 if small else 2048)
    args.steps = args.steps or (4 if small else 64)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if small else 4)
    return args


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def build_model(torch, name: str, small: bool, device, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    dims = dict(ARCHITECTURES[name])
    model_type = dims.pop("model_type")
    if small:
        dims.update(SMALL)
        dims.update(bos_token_id=1, eos_token_id=2)
    config = AutoConfig.for_model(model_type, **dims)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def transformers_cache_bytes(cache) -> int:
    """Bytes a transformers cache holds: 16-bit keys and values, and for a quantized cache its codes and the
    tensors of their metadata (scales, zeros)."""
    import torch

    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
        for name in ("_quantized_keys", "_quantized_values"):
            stored = getattr(layer, name, None)
            if stored is None:
                continue
            codes, meta = stored
            tensors = [codes, *(v for v in meta.values() if isinstance(v, torch.Tensor))]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


class TransformersCaches:
    """What :func:`run_setting` uses of a :class:`qpruning.KVCompressor` (``new_cache``, ``attach``), for
    transformers' own caches, plus ``summary`` (the bytes they hold)."""

    def __init__(self, kind: str, bits: int, group_size: int, axis: int) -> None:
        if kind not in CACHE_LABELS:
            raise ValueError(f"cache {kind!r} is not allowed; use one of {', '.join(CACHE_LABELS)}")
        self.kind, self.bits, self.group_size, self.axis = kind, bits, group_size, axis

    def new_cache(self, model):
        from transformers import DynamicCache, QuantizedCache

        if self.kind == "dynamic":
            return DynamicCache(config=model.config)
        return QuantizedCache("hqq", model.config, nbits=self.bits, q_group_size=self.group_size,
                              axis_key=self.axis, axis_value=self.axis, residual_length=128)

    def attach(self, model):
        import contextlib

        return contextlib.nullcontext()

    def summary(self, cache) -> dict:
        return {"kv_bytes": transformers_cache_bytes(cache)}


def run_setting(torch, model, compressor, batch: int, args, device, prompt_tokens: int | None = None) -> dict:
    """Prefill, warm up, then time ``args.steps`` decode steps; returns timings and memory.

    ``compressor``: a :class:`qpruning.KVCompressor` or a :class:`TransformersCaches`; ``prompt_tokens``
    defaults to ``args.prompt``."""
    from qpruning import cache_kwargs

    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(args.seed + batch)
    prompt = torch.randint(3, vocab, (batch, prompt_tokens or args.prompt), generator=gen).to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    plain = isinstance(compressor, TransformersCaches)
    times = []
    kv_prefill = kv_end = None
    with torch.no_grad(), compressor.attach(model):
        for _ in range(args.repeats):
            cache = compressor.new_cache(model)
            out = model(input_ids=prompt, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
            if plain:
                summary = compressor.summary(cache)
            else:
                summary = getattr(cache, "prefill_summary", None) or cache.summary()
            kv_prefill = summary["kv_bytes"]
            next_ids = out.logits[:, -1:].argmax(-1)
            del out
            for _ in range(args.warmup_steps):
                next_ids = model(input_ids=next_ids, **cache_kwargs(model, cache), use_cache=True).logits[:, -1:].argmax(-1)
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                next_ids = model(input_ids=next_ids, **cache_kwargs(model, cache), use_cache=True).logits[:, -1:].argmax(-1)
            sync()
            times.append(time.perf_counter() - t0)
            kv_end = (compressor.summary(cache) if plain else cache.summary())["kv_bytes"]
            del cache, next_ids
    seconds = statistics.median(times)
    return {
        "tokens_per_s": batch * args.steps / seconds,
        "seconds": seconds,
        "kv_bytes_per_item": kv_prefill / batch,
        "kv_bytes_per_item_end": kv_end / batch,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
    import torch

    from qpruning import KIVI, KVCompressor, SnapKV
    from qpruning.backends.triton import available, interpreting

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    if not on_gpu:
        torch.set_num_threads(args.cpu_threads)
    force_cpu_kernel = not on_gpu and interpreting()
    kernels = list(args.kernel)
    note = ""
    if "on" in kernels and not (on_gpu and available()) and not force_cpu_kernel:
        kernels.remove("on")
        note = "kernel=on skipped: no GPU with Triton here (on a CPU, --interpret runs it under the interpreter)"
        print(note, flush=True)
    dtype = torch.bfloat16
    name = torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.processor() or platform.machine()})"
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    if interpreting() and "TRITON_INTERPRET" not in command:
        command = "TRITON_INTERPRET=1 " + command
    out = Path(args.out or f"results/bench/throughput-{'cpu-smoke' if not on_gpu else slug(name)}")

    rows = []
    for model_name in args.models:
        torch.manual_seed(args.seed)
        model = build_model(torch, model_name, args.small, device, dtype)
        label = ("tiny_" + ARCHITECTURES[model_name]["model_type"]) if args.small else model_name
        for bits in args.bits:
            quantizer = KIVI(bits=bits, group_size=args.group_size)
            tokens = KVCompressor(
                pruner=SnapKV(), quantizer=quantizer, budget=args.budget, full_cache_tokens=args.full_cache_tokens
            ).plan(model.config)[0].tokens
            for cache_kind, kernel, compressor in cache_settings(args, kernels, quantizer, KVCompressor, SnapKV):
                qpruning_cache = cache_kind == "qpruning"
                for batch in args.batch:
                    row = {
                        "model": label, "tokens": tokens, "bits": bits, "batch": batch, "device": name,
                        "command": command, "date": date, "pruner": "snapkv" if qpruning_cache else "",
                        "quant": ("kivi" if qpruning_cache else cache_kind) if bits < 16 else "",
                        "group_size": args.group_size, "repeats": args.repeats,
                        "kernel": kernel + (" (interpreter)" if force_cpu_kernel and kernel == "on" else ""),
                        "cache": cache_kind, "prompt": args.prompt if qpruning_cache else tokens,
                        "steps": args.steps, "weights": "random", "note": "",
                    }
                    try:
                        row.update(run_setting(torch, model, compressor, batch, args, device, row["prompt"]))
                    except torch.OutOfMemoryError:
                        row.update(tokens_per_s=math.nan, kv_bytes_per_item=math.nan, note="out of memory")
                    if on_gpu:
                        torch.cuda.empty_cache()
                    gc.collect()
                    rows.append(row)
                    print(
                        f"{label} {tokens:4d}x{bits:<2d} batch {batch:4d} {cache_kind} kernel={kernel:3s} "
                        f"{row['tokens_per_s']:10.1f} tokens/s  {row['kv_bytes_per_item'] / 1e6:8.2f} MB/item "
                        f"{row['note']}",
                        flush=True,
                    )
        del model
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()

    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    outputs = (
        ("on", out.with_suffix(".csv")),
        ("off", out.parent / (out.name + "-kernel-off.csv")),
        ("transformers", out.parent / (out.name + "-transformers.csv")),
    )
    for kernel, path in outputs:
        selected = [r for r in rows if (r["cache"] != "qpruning" and kernel == "transformers")
                    or (r["cache"] == "qpruning" and r["kernel"].split()[0] == kernel)]
        if not selected:
            continue
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS + EXTRA_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for r in selected:
                writer.writerow({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()})
        written.append(str(path))
    md = out.with_suffix(".md")
    md.write_text(markdown(rows, args, name, command, date, on_gpu, force_cpu_kernel, note))
    print(f"wrote {', '.join(written)} and {md}")
    return 0


def cache_settings(args, kernels, quantizer, compressor_cls, pruner_cls):
    """``(cache, kernel label, compressor)`` of one bit width: qpruning per kernel setting, then transformers'
    cache of that width (DynamicCache at 16 bits, QuantizedCache(HQQ) below) when ``--caches`` names it."""
    out = []
    if "qpruning" in args.caches:
        for kernel in kernels:
            compressor = compressor_cls(
                pruner=pruner_cls(), quantizer=quantizer, budget=args.budget,
                full_cache_tokens=args.full_cache_tokens, kernel=kernel,
            )
            out.append(("qpruning", kernel, compressor))
    kind = "dynamic" if quantizer.bits == 16 else "hqq"
    if kind in args.caches:
        out.append((kind, CACHE_LABELS[kind],
                    TransformersCaches(kind, quantizer.bits, args.group_size, args.hqq_axis)))
    return out


def markdown(rows, args, device, command, date, on_gpu, interpreted, note) -> str:
    lines = [f"# Decoding throughput and KV memory (Table 4), {device}", ""]
    if not on_gpu:
        lines += [
            "**CPU smoke run on tiny random models: it shows that the benchmark runs, not how fast anything is.**"
            + (" kernel=on ran the fused kernel under Triton's interpreter (Python)." if interpreted else ""),
            "",
        ]
    lines += [
        f"- command: `{command}`",
        f"- device: {device}; date: {date}",
        f"- SnapKV + KIVI (groups of {args.group_size}), budget {args.budget:g} of a {args.full_cache_tokens}-token "
        f"16-bit cache; prompt {args.prompt} random tokens; {args.steps} timed greedy decode steps after "
        f"{args.warmup_steps} untimed; random bf16 weights, "
        + ("tiny 2-layer configs of the architectures (--small)" if args.small else "the models' real dimensions")
        + f"; median of {args.repeats} run(s)",
        "- tokens/s = batch x steps / seconds; KV MB per item = measured bytes after prefill / batch (10^6 bytes)",
    ]
    if any(r["cache"] != "qpruning" for r in rows):
        lines.append(
            f"- {CACHE_LABELS['dynamic']} / {CACHE_LABELS['hqq']}: transformers' own caches, fed a prompt as long as "
            f"the budget's tokens (nothing pruned); HQQ groups of {args.group_size} along axis {args.hqq_axis}, "
            "residual window 128"
        )
    if note:
        lines.append(f"- {note}")
    batches = sorted({r["batch"] for r in rows})
    kernels = sorted({r["kernel"] for r in rows}, key=lambda k: (not k.startswith("on"), k))
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += ["", f"## {model}", ""]
        header = ["tokens x bits", "KV MB / item"] + [f"{k}: batch={b}" for k in kernels for b in batches]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        settings = dict.fromkeys((r["tokens"], r["bits"]) for r in rows if r["model"] == model)
        base = {}
        for tokens, bits in settings:
            cells = {(r["kernel"], r["batch"]): r for r in rows
                     if r["model"] == model and r["tokens"] == tokens and r["bits"] == bits}
            per_cache = {r["cache"]: r["kv_bytes_per_item"] for r in cells.values()}
            kv = " / ".join(
                (f"{v / 1e6:.2f}" if v == v else "n/a") + (f" ({c})" if len(per_cache) > 1 else "")
                for c, v in per_cache.items()
            )
            row = [f"{tokens} x {bits}-bit", kv]
            for k in kernels:
                for b in batches:
                    r = cells.get((k, b))
                    if r is None or r["tokens_per_s"] != r["tokens_per_s"]:
                        row.append(r["note"] if r else "")
                        continue
                    value = r["tokens_per_s"]
                    if bits == 16:
                        base[(k, b)] = value
                    ref = base.get((CACHE_LABELS["dynamic"] if k == CACHE_LABELS["hqq"] else k, b))
                    row.append(f"{value:.1f}" + (f" ({value / ref:.2f}x)" if ref and bits != 16 else ""))
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "In parentheses: throughput relative to the 16-bit setting with the same kernel (QuantizedCache: "
        "DynamicCache) and batch. The paper "
        "(Table 4, Mistral-7B-v0.2, one A100) measured 512 x 4-bit at 0.87x / 0.90x / 0.89x of 128 x 16-bit for "
        "batch 64 / 96 / 128; issue #7's goal is >= 1.0x.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
