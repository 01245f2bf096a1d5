#!/usr/bin/env python
"""Up to which context length a model finds the needle, uncompressed: a length x depth table of NIAH cells.

The benchmark's own samples, prompts and metric (``qpruning.benchmarks.niah``: Kamradt's needle in the Paul Graham
essays, the prompt through the model's ``chat_template`` setting, greedy decoding of up to 30 tokens stopping at a
newline, ROUGE-1 F x 100 and whether the answer holds "eat a sandwich and sit in Dolores Park"), run on the model
as ``model=<name>`` loads it, with no compressor: the full cache. Each cell is timed as prefill (up to the first
token's logits) and decoding. Output: markdown with the command, the machine, the date and the wall time.

    python scripts/niah_lengths.py --model gemma3_270m --lengths 1000 2000 4000 --depths 0 50 100
    python scripts/niah_lengths.py --model smollm2_135m --lengths 2000 4000 --out results/x.md --append
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

from qpruning.benchmarks import get_benchmark  # noqa: E402


class StepClock(LogitsProcessor):
    """Records when each generation step's logits are ready: the first one ends the prefill."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def load_spec(model: str, overrides: list[str]):
    """The :class:`~qpruning.models.ModelSpec` of ``model=<model>`` (plus Hydra ``overrides``), as ``run.py`` builds it."""
    from hydra import compose, initialize_config_dir

    from qpruning.app import build, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", *overrides])
    return build(cfg, "model")


def run_cell(model, tokenizer, bench, sample, spec) -> dict:
    ids = bench.encode(sample, tokenizer, bench.max_input_tokens(sample, spec.context_window), spec.chat_template)
    clock = StepClock()
    prompt = torch.tensor([ids], device=next(model.parameters()).device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), pad_token_id=tokenizer.pad_token_id,
                             logits_processor=LogitsProcessorList([clock]), **bench.generation_kwargs(sample, tokenizer))
    ended = time.perf_counter()
    new = out[0, len(ids):]
    prediction = bench.postprocess(sample, tokenizer.decode(new, skip_special_tokens=True))
    prefill = clock.times[0] - started
    return {
        "length": sample.extra["context_length"],
        "depth": sample.extra["depth"],
        "input_tokens": len(ids),
        "new_tokens": len(new),
        "prediction": prediction,
        "score": bench.score(sample, prediction),
        "contains": bench.contains(prediction),
        "prefill_s": prefill,
        "decode_s": ended - started - prefill,
    }


def answer_range(cells: list[dict], lengths: list[int]) -> str:
    """"answers at <= N tokens": the longest length up to which every cell at every length holds the needle."""
    ok_up_to = None
    for length in sorted(lengths):
        row = [c for c in cells if c["length"] == length]
        if row and all(c["contains"] for c in row):
            ok_up_to = length
        else:
            break
    partial = [length for length in sorted(lengths) if any(c["contains"] for c in cells if c["length"] == length)]
    if ok_up_to is None:
        head = f"no length where every depth answers (the shortest, {min(lengths)} tokens, already misses)"
    else:
        head = f"answers at every depth up to {ok_up_to} tokens"
    longer = [n for n in partial if ok_up_to is None or n > ok_up_to]
    if longer:
        head += "; some depths also at " + ", ".join(str(n) for n in longer)
    return head


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()[:10]
    except OSError:
        lscpu = []
    return "\n".join(lscpu) or platform.processor() or platform.machine()


def markdown(args, spec, cells: list[dict], wall: float, loads: tuple[str, str]) -> str:
    depths = sorted({c["depth"] for c in cells})
    lengths = sorted({c["length"] for c in cells})
    by_cell = {(c["length"], c["depth"]): c for c in cells}
    lines = [
        f"## {spec.name}: NIAH uncompressed, length x depth",
        "",
        "```",
        "nice -n 5 python " + " ".join(shlex.quote(a) for a in ["scripts/niah_lengths.py", *sys.argv[1:]]),
        "```",
        "",
        f"- model: `model={spec.name}` ({spec.name_or_path}, {spec.resolved_dtype()}, "
        f"{spec.resolved_attn_implementation()}, {spec.resolved_device()}), chat_template={spec.chat_template}, "
        "no compressor (the full cache)",
        f"- date: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; wall time {wall / 60:.1f} min for "
        f"{len(cells)} cells (model load included); torch threads {torch.get_num_threads()}; "
        f"load average {loads[0]} at the start, {loads[1]} at the end (the machine is shared)",
        "- score: ROUGE-1 F x 100 of the first line of the answer against the needle (the benchmark's metric); "
        "Y/N: the answer holds \"eat a sandwich and sit in Dolores Park\"",
        f"- **{answer_range(cells, lengths)}**",
        "",
        "| length | tokens | " + " | ".join(f"depth {d:g}%" for d in depths) + " | prefill s | decode s (tokens) |",
        "|---:|---:|" + "---|" * len(depths) + "---:|---:|",
    ]
    for length in lengths:
        row = [by_cell[(length, d)] for d in depths if (length, d) in by_cell]
        marks = [f"{c['score']:.0f} {'Y' if c['contains'] else 'N'}" for c in row]
        prefill = sum(c["prefill_s"] for c in row) / len(row)
        decode = sum(c["decode_s"] for c in row) / len(row)
        new = sum(c["new_tokens"] for c in row) / len(row)
        tokens = round(sum(c["input_tokens"] for c in row) / len(row))
        lines.append(f"| {length} | {tokens} | " + " | ".join(marks) + f" | {prefill:.1f} | {decode:.1f} ({new:.0f}) |")
    lines += ["", "Answers that miss (first line, as scored):", ""]
    misses = [c for c in cells if not c["contains"]]
    lines += [f"- L{c['length']} D{c['depth']:g}: {c['prediction']!r}" for c in misses] or ["- none"]
    lines += ["", "Machine (`lscpu | head`):", "", "```", machine(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3_270m", help="a conf/model name (model=...)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--depths", type=float, nargs="+", default=[0, 25, 50, 75, 100])
    parser.add_argument("--override", action="append", default=[], help="a Hydra override, e.g. model.dtype=float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (also printed)")
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loads = [" ".join(f"{x:.1f}" for x in os.getloadavg())]
    started = time.perf_counter()
    spec = load_spec(args.model, args.override)
    bench = get_benchmark("niah", lengths=args.lengths, depths=args.depths)
    bench.validate(spec.context_window)
    model, tokenizer = spec.load()
    cells = []
    for sample in bench.samples(tokenizer):
        cell = run_cell(model, tokenizer, bench, sample, spec)
        cells.append(cell)
        print(f"L{cell['length']} D{cell['depth']:g}: {cell['input_tokens']} tokens, score {cell['score']:.0f}, "
              f"{'found' if cell['contains'] else 'missed'}, prefill {cell['prefill_s']:.1f}s, decode "
              f"{cell['decode_s']:.1f}s ({cell['new_tokens']} tokens): {cell['prediction']!r}", file=sys.stderr,
              flush=True)
    loads.append(" ".join(f"{x:.1f}" for x in os.getloadavg()))
    text = markdown(args, spec, cells, time.perf_counter() - started, (loads[0], loads[1]))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a" if args.append else "w") as handle:
            handle.write(("\n" if args.append and args.out.stat().st_size else "") + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
