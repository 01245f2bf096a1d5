#!/usr/bin/env python
"""Quantization error of keys and values with and without the Hadamard rotation (issue 16, item 2).

For kivi vs kivi_rot and flexgen vs flexgen_rot at 2, 4 and 8 bits (groups of 64), the relative Frobenius error
``||dequant(quant(x R)) R^T - x|| / ||x||`` (measured in the original basis; ``R``: layer ``i``'s rotation, as the
cache uses it), the mean over layers, of:

- (a) fresh random data: ``--random-layers`` layers of ``[kv_heads * tokens, head_dim]`` Gaussian keys and values
  whose keys have 4 outlier channels scaled x10-x20 (what KIVI's paper reports for real keys);
- (b) SmolLM2-135M's (embedded, float32) post-RoPE keys and values, all 30 layers, from one prefill of ``--tokens``
  tokens of Paul Graham's essays; and, on the same prefill, the error of the attention output of the last 64
  queries (causal) over the quantized keys and values, relative to the 16-bit one.

    python scripts/rotation_error.py --out results/rotated/quant_error.md
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
from qpruning.cache.rotation import Rotation  # noqa: E402

METHODS = ("kivi", "kivi_rot", "flexgen", "flexgen_rot")
BITS = (2, 4, 8)
GROUP = 64
QUERIES = 64  # the last queries whose attention output is compared


def reconstructed(quantizer: KVQuantizer, x: torch.Tensor, rotation: Rotation | None, keys: bool) -> torch.Tensor:
    """``x`` ``[n, d]`` quantized as the cache stores it (rotated first for a rotating quantizer), back in the
    original basis (float32)."""
    stored = rotation.rotate(x) if quantizer.rotate else x.float()
    quantize = quantizer.quantize_keys if keys else quantizer.quantize_values
    back = quantize(stored, torch.float16).dequantize(torch.float32)
    return rotation.unrotate(back) if quantizer.rotate else back


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def random_layers(layers: int, rows: int, tokens: int, head_dim: int, seed: int):
    """(keys, values) ``[rows * tokens, head_dim]`` per layer, keys with 4 outlier channels scaled x10-x20."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        keys = torch.randn(rows * tokens, head_dim, generator=g)
        channels = torch.randperm(head_dim, generator=g)[:4]
        keys[:, channels] *= torch.linspace(10, 20, 4)
        out.append((None, keys, torch.randn(rows * tokens, head_dim, generator=g)))
    return out


def smollm2_layers(tokens: int):
    """SmolLM2's recorded prefill: per layer (queries [1, q_heads, n, d], keys and values [kv_rows * n, d])."""
    from qpruning.models import ModelSpec
    from qpruning.optimize.calibration import record_prefill
    from scripts.measure_prefill import prompt_ids

    model, tokenizer = ModelSpec(name="smollm2_135m", name_or_path="embedded:smollm2_135m", dtype="float32").load()
    ids = prompt_ids(tokenizer, tokens)
    out = []
    for query, key, value, _ in record_prefill(model, ids):
        d = key.shape[-1]
        out.append((query, key.reshape(-1, d).float(), value.reshape(-1, d).float()))
    return out, ids.shape[1]


def attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Causal attention of the last :data:`QUERIES` queries ``[1, q_heads, n, d]`` over ``[kv_rows * n, d]``."""
    _, q_heads, _, d = query.shape
    kv = keys.shape[0] // n
    k = keys.view(kv, 1, n, d)
    v = values.view(kv, 1, n, d)
    q = query[0, :, -QUERIES:].float().view(kv, q_heads // kv, QUERIES, d)
    logits = q @ k.transpose(-1, -2) * d**-0.5
    allowed = torch.arange(n).view(1, n) <= torch.arange(n - QUERIES, n).view(QUERIES, 1)
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return probs @ v


def measure(layers, n: int | None) -> dict[tuple[str, int], dict[str, float]]:
    """Mean over layers of the key / value (and, with queries, attention-output) errors per method and bits."""
    results = {}
    for name in METHODS:
        for bits in BITS:
            quantizer = get_quantizer(name, bits=bits, group_size=GROUP)
            sums = {"keys": 0.0, "values": 0.0, "attention": 0.0}
            for index, (query, keys, values) in enumerate(layers):
                rotation = Rotation.for_layer(keys.shape[-1], index)
                k = reconstructed(quantizer, keys, rotation, keys=True)
                v = reconstructed(quantizer, values, rotation, keys=False)
                sums["keys"] += relative(k, keys)
                sums["values"] += relative(v, values)
                if query is not None:
                    sums["attention"] += relative(attention(query, k, v, n), attention(query, keys, values, n))
            results[name, bits] = {key: value / len(layers) for key, value in sums.items()}
    return results


def table(results, with_attention: bool) -> list[str]:
    columns = ["keys", "values"] + (["attention"] if with_attention else [])
    head = "| bits | " + " | ".join(f"{m} {c}" for c in columns for m in METHODS) + " |"
    lines = [head, "|---|" + "---|" * (len(columns) * len(METHODS))]
    for bits in BITS:
        cells = [f"{results[m, bits][c]:.4f}" for c in columns for m in METHODS]
        lines.append(f"| {bits} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="SmolLM2 prompt length (essay tokens)")
    parser.add_argument("--random-layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-model", action="store_true", help="only the random data")
    parser.add_argument("--out", type=Path, default=Path("results/rotated/quant_error.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    random_results = measure(random_layers(args.random_layers, 3, args.tokens, 64, seed=0), None)
    sections = [
        f"## (a) fresh random data: {args.random_layers} layers of 3 x {args.tokens} tokens, head_dim 64, keys with "
        "4 outlier channels (x10-x20)",
        "",
        *table(random_results, with_attention=False),
    ]
    if not args.skip_model:
        layers, n = smollm2_layers(args.tokens)
        model_results = measure(layers, n)
        sections += [
            "",
            f"## (b) SmolLM2-135M, post-RoPE keys and values of all {len(layers)} layers, one prefill of {n} essay "
            f"tokens; attention: output of the last {QUERIES} queries (causal) vs 16-bit",
            "",
            *table(model_results, with_attention=True),
        ]
    command = "python scripts/rotation_error.py " + " ".join(sys.argv[1:])
    header = [
        "# Quantization error with and without the Hadamard rotation (issue 16)",
        "",
        "Relative Frobenius error in the original basis (after rotating back), mean over layers; groups of 64, "
        "16-bit scales and zeros; `_rot`: keys and values rotated by layer i's randomized Hadamard matrix "
        "(signs seeded 0x5EED + i), as the cache stores them.",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {platform.machine()} CPU VM ({os.cpu_count()} cores, {args.threads} threads), no GPU; "
        f"torch {torch.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{time.time() - started:.0f} s",
        "",
    ]
    text = "\n".join(header + sections) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
