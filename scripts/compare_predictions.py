"""Compare the predictions.jsonl of two output roots (e.g. two `make demo` runs), run folder by run folder.

`python scripts/compare_predictions.py BEFORE_ROOT AFTER_ROOT` prints a Markdown table: for every run folder of
BEFORE_ROOT, how many samples both roots hold and how many have the same prediction, kept tokens and bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(path: Path) -> dict[str, dict]:
    records = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["id"]] = record
    return records


def same(a: dict, b: dict) -> bool:
    return all(a.get(key) == b.get(key) for key in ("prediction", "kept_tokens", "kv_bytes"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    print("| run folder | samples before | samples after | compared | identical (prediction, kept tokens, bytes) |")
    print("|---|---|---|---|---|")
    for path in sorted(args.before.rglob("predictions.jsonl")):
        relative = path.relative_to(args.before)
        before = load(path)
        other = args.after / relative
        after = load(other) if other.exists() else {}
        common = sorted(set(before) & set(after))
        identical = sum(same(before[i], after[i]) for i in common)
        print(f"| {relative.parent} | {len(before)} | {len(after)} | {len(common)} | {identical} |")


if __name__ == "__main__":
    main()
