"""The tables of results/headwise/README.md from run folders: python results/headwise/table.py /tmp/headwise_runs"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(root: Path) -> list[dict]:
    out = []
    for metrics_path in sorted(root.rglob("metrics.json")):
        m = json.loads(metrics_path.read_text())
        records = [json.loads(line) for line in (metrics_path.parent / "predictions.jsonl").open()]
        by_length: dict[int, list[float]] = {}
        for r in records:
            by_length.setdefault(r["extra"]["context_length"], []).append(r["score"])
        out.append({
            "pruner": m["pruner"],
            "window": m["config"]["pruner"].get("window", 0),
            "bits": m["bits"],
            "quant": m["quant"],
            "score": m["score"],
            "contains": m.get("contains_rate"),
            "by_length": {k: sum(v) / len(v) for k, v in sorted(by_length.items())},
            "kept": m["tokens_effective"],
            "kv_bytes": m["kv_bytes"],
            "kv_bytes_set": sorted({r["kv_bytes"] for r in records}),
            "kv_ratio": m["kv_ratio"],
            "samples": m["samples"],
            "seconds": m["seconds"],
            "folder": metrics_path.parent.name,
        })
    order = {"none": 0, "snapkv": 1, "adakv": 2, "headkv": 3}
    default_window = {"none": 0, "snapkv": 32, "adakv": 8, "headkv": 8}  # the paper's Appendix B
    return sorted(out, key=lambda r: (r["window"] != default_window.get(r["pruner"]), r["quant"] != "flexgen", -r["bits"], order.get(r["pruner"], 9)))


def markdown(table: list[dict]) -> str:
    lengths = sorted({k for r in table for k in r["by_length"]})
    head = (
        "| pruner | window | quant | bits | NIAH score | key phrase found | "
        + " | ".join(f"score @ {k}" for k in lengths)
        + " | kept tokens | KV bytes (per sample) | of 16-bit full | samples | run time |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table:
        cells = " | ".join(f"{r['by_length'].get(k, float('nan')):.1f}" for k in lengths)
        kv = f"{r['kv_bytes_set'][0]:,}" if len(r["kv_bytes_set"]) == 1 else f"{r['kv_bytes']:,.0f} (mean; grows with the input)"
        lines.append(
            f"| {r['pruner']} | {r['window']} | {r['quant']} | {r['bits']} | {r['score']:.1f} | {r['contains']:.0f}% | {cells} | "
            f"{r['kept']:.1f} | {kv} | {100 * r['kv_ratio']:.2f}% | {r['samples']} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(rows(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/headwise_runs"))))
