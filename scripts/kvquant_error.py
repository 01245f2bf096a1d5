#!/usr/bin/env python
"""Quantization error and bytes of keys before vs after RoPE on SmolLM2 (issue 29, item 2: KVQuant-style).

For ``kivi``, ``kivi_outlier``, ``kvquant`` without outliers (``pre-RoPE only``) and ``kvquant`` (pre-RoPE +
per-vector outliers) at 2, 4 and 8 bits, groups of 64, on SmolLM2-135M's (embedded, float32) keys and values of all
30 layers from one prefill of ``--tokens`` essay tokens: the relative Frobenius error of the post-RoPE keys as
attention reads them, of the values, and of the attention output of the last 64 queries (causal) against the
unquantized one; mean over layers. And the bytes per number each stores (codes, scales, zeros, outliers, and the
positions ``kvquant`` keeps), measured from the tensors.

    python scripts/kvquant_error.py --out results/methods/kvquant_error.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qpruning.cache.quantizers import KVQuantizer, get_quantizer  # noqa: E402
from qpruning.cache.rope import KeyRope, KeyRotary, key_rotaries  # noqa: E402
from scripts.rotation_error import QUERIES, attention, relative  # noqa: E402

BITS = (2, 4, 8)
GROUP = 64
METHODS: dict[str, dict] = {
    "kivi": {"name": "kivi"},
    "kivi_outlier": {"name": "kivi_outlier"},
    "pre-RoPE only": {"name": "kvquant", "outliers": None},
    "kvquant": {"name": "kvquant"},
}


def held(quantizer: KVQuantizer, x: torch.Tensor, rope: KeyRope | None, keys: bool) -> tuple[torch.Tensor, int]:
    """``x`` ``[n, d]`` as the cache gives it back (float32), and the bytes it is held in."""
    if keys:
        tensor = quantizer.quantize_keys(x, torch.float16, rope)
    else:
        tensor = quantizer.quantize_values(x, torch.float16)
    return tensor.dequantize(torch.float32), sum(tensor.nbytes().values())


def measure(layers, rotaries: list[KeyRotary], n: int) -> dict[tuple[str, int], dict[str, float]]:
    results = {}
    for label, kwargs in METHODS.items():
        for bits in BITS:
            quantizer = get_quantizer(bits=bits, group_size=GROUP, **kwargs)
            sums = {"keys": 0.0, "values": 0.0, "attention": 0.0, "bytes": 0.0}
            for (query, keys, values), rotary in zip(layers, rotaries):
                positions = torch.arange(n).repeat(keys.shape[0] // n)  # rows laid end to end, one prompt each
                k, key_bytes = held(quantizer, keys, KeyRope(rotary, positions), keys=True)
                v, value_bytes = held(quantizer, values, None, keys=False)
                sums["keys"] += relative(k, keys)
                sums["values"] += relative(v, values)
                sums["attention"] += relative(attention(query, k, v, n), attention(query, keys, values, n))
                sums["bytes"] += (key_bytes + value_bytes) / (keys.numel() + values.numel())
            results[label, bits] = {key: value / len(layers) for key, value in sums.items()}
    return results


def table(results) -> list[str]:
    columns = ("keys", "values", "attention", "bytes")
    lines = ["| method | bits | keys | values | attention output | bytes per number |", "|---|---|---|---|---|---|"]
    for bits in BITS:
        for label in METHODS:
            cells = [f"{results[label, bits][c]:.4f}" for c in columns]
            lines.append(f"| {label} | {bits} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="SmolLM2 prompt length (essay tokens)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=Path("results/methods/kvquant_error.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()

    from qpruning.models import ModelSpec
    from qpruning.optimize.calibration import record_prefill
    from scripts.measure_prefill import prompt_ids

    model, tokenizer = ModelSpec(name="smollm2_135m", name_or_path="embedded:smollm2_135m", dtype="float32").load()
    ids = prompt_ids(tokenizer, args.tokens)
    n = ids.shape[1]
    layers = []
    for query, key, value, _ in record_prefill(model, ids):
        d = key.shape[-1]
        layers.append((query, key.reshape(-1, d).float(), value.reshape(-1, d).float()))
    results = measure(layers, key_rotaries(model), n)
    command = "python scripts/kvquant_error.py " + " ".join(sys.argv[1:])
    lines = [
        "# Keys quantized before vs after RoPE on SmolLM2-135M (issue 29, item 2)",
        "",
        f"Relative Frobenius error, mean over the {len(layers)} layers, of one prefill of {n} essay tokens: the "
        "post-RoPE keys as attention reads them (kvquant: dequantized pre-RoPE keys rotated again), the values, and "
        f"the attention output of the last {QUERIES} queries (causal) against the unquantized one. Groups of 64, "
        "float16 scales and zeros; bytes per number: everything the tensors hold (codes, scales, zeros, outliers' "
        "int32 index and 16-bit value, kvquant's int32 position per key) over the numbers stored.",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {platform.machine()} CPU VM ({os.cpu_count()} cores, {args.threads} threads), no GPU; "
        f"torch {torch.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {time.time() - started:.0f} s",
        "",
        *table(results),
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
