"""Prefill cost of compression and bytes held, on SmolLM2 at ~4k tokens (issue 2's figures).

For each configuration, one prefill (a forward pass over the prompt, with the cache) is timed; configurations are
interleaved round by round so that a busy machine slows them alike, and the median over rounds is reported, with
the ratio to the uncompressed prefill (the cost of scoring, selecting, gathering and quantizing). The bytes the
cache holds after prefill are measured from its tensors, broken down by kind.

    python scripts/measure_prefill.py --tokens 4096 --rounds 5 --out results/core

``--configs`` measures only the named configurations (the first named one is the reference of the ratios: name
the uncompressed one first), and ``--stem`` names the output files (``prefill_overhead`` by default), so that a
partial measurement does not overwrite the full table.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from qpruning import H2O, KIVI, FlexGen, KVCompressor, NoPruner, PyramidKV, SnapKV, StreamingLLM
from qpruning.benchmarks.common import essay_files
from qpruning.models import ModelSpec
from qpruning.transformers_api import cache_kwargs


def configurations(budget: float) -> list[tuple[str, KVCompressor]]:
    def make(pruner, bits, quantizer=KIVI):
        return KVCompressor(pruner=pruner, quantizer=quantizer(bits=bits, group_size=64), budget=budget)

    return [
        ("uncompressed (none, 16-bit)", KVCompressor(pruner=NoPruner(), quantizer=KIVI(bits=16))),
        ("KIVI 4-bit only (none)", KVCompressor(pruner=NoPruner(), quantizer=KIVI(bits=4))),
        ("SnapKV 1x16", make(SnapKV(), 16)),
        ("SnapKV 2x8", make(SnapKV(), 8)),
        ("SnapKV 4x4", make(SnapKV(), 4)),
        ("SnapKV 4x4 FlexGen", make(SnapKV(), 4, FlexGen)),
        ("PyramidKV 4x4", make(PyramidKV(), 4)),
        ("H2O 4x4", make(H2O(), 4)),
        ("StreamingLLM 4x4", make(StreamingLLM(), 4)),
    ]


def prompt_ids(tokenizer, length: int) -> torch.Tensor:
    text = "".join(p.read_text() for p in essay_files())
    ids = tokenizer(text, add_special_tokens=False).input_ids[:length]
    return torch.tensor([ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="prompt length")
    parser.add_argument("--budget", type=float, default=1 / 16, help="memory budget fraction of an 8k cache")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=Path("results/core"))
    names = [name for name, _ in configurations(1 / 16)]
    parser.add_argument(
        "--configs", nargs="+", choices=names, default=None, metavar="NAME",
        help="measure only these configurations, the first being the ratios' reference (allowed: "
        + "; ".join(names) + ")",
    )
    parser.add_argument("--stem", default="prefill_overhead", help="name of the .md and .csv files written")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = ModelSpec(name="smollm2_135m", name_or_path="embedded:smollm2_135m").load()
    ids = prompt_ids(tokenizer, args.tokens)
    configs = configurations(args.budget)
    if args.configs:
        by_name = dict(configs)
        configs = [(name, by_name[name]) for name in dict.fromkeys(args.configs)]
    times: dict[str, list[float]] = {name: [] for name, _ in configs}
    summaries: dict[str, dict] = {}
    with torch.inference_mode():
        model(ids[:, :256])  # warm-up
        for round_ in range(args.rounds):
            for name, compressor in configs:
                with compressor.attach(model):
                    cache = compressor.new_cache(model)
                    start = time.perf_counter()
                    model(ids, **cache_kwargs(model, cache), logits_to_keep=1)
                    times[name].append(time.perf_counter() - start)
                summaries[name] = cache.prefill_summary
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    base = statistics.median(times[configs[0][0]])
    rows = []
    for name, _compressor in configs:
        summary = summaries[name]
        held = summary["bytes"]
        median = statistics.median(times[name])
        rows.append({
            "configuration": name,
            "kept_tokens": round(summary["kept_tokens"], 1),
            "prefill_s": round(median, 3),
            "ratio_to_uncompressed": round(median / base, 3),
            "kv_bytes": summary["kv_bytes"],
            "kv_bytes_full_16bit": summary["kv_bytes_full"],
            "kv_fraction_of_16bit": round(summary["kv_ratio"], 4),
            "packed": held["packed"],
            "scales": held["scales"],
            "zeros": held["zeros"],
            "full_precision": held["full"],
            "index": held["index"],
        })

    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / f"{args.stem}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    lines = [
        "# Prefill overhead of compression and bytes held (SmolLM2-135M, CPU)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Prompt: {ids.shape[1]} tokens of Paul Graham essays; budget {args.budget:g} of an 8k 16-bit cache "
        f"(nominal: 1x16 = {int(args.budget * 8192)} tokens); median of {args.rounds} interleaved rounds.",
        "",
        f"Load average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        "The uncompressed row keeps the model's float32 tensors (the model runs in float32 on CPU), so its bytes "
        "are twice the 16-bit reference; compressed rows store 16-bit tokens, scales and zeros.",
        "",
        "| configuration | kept tokens | prefill (s) | x uncompressed | KV bytes | % of 16-bit | packed | scales+zeros | 16-bit tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['configuration']} | {r['kept_tokens']:g} | {r['prefill_s']:.2f} | {r['ratio_to_uncompressed']:.2f} | "
            f"{r['kv_bytes']:,} | {100 * r['kv_fraction_of_16bit']:.1f}% | {r['packed']:,} | "
            f"{r['scales'] + r['zeros']:,} | {r['full_precision']:,} |"
        )
    (args.out / f"{args.stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
