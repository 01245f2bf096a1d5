#!/usr/bin/env python
"""Download LongBench / LongBench-E (THUDM/LongBench) as the official jsonl files, for offline runs.

Run on a machine with internet, copy the folder to the machine without, and point the benchmark at it::

    python scripts/download_longbench.py --out DIR            # the 21 LongBench files and the 13 LongBench-E files
    python scripts/download_longbench.py --out DIR --only longbench --datasets narrativeqa qasper
    python run.py benchmark=longbench benchmark.data_dir=DIR

Without ``--out`` the files go to the qpruning cache (``~/.cache/qpruning/data/longbench``), where the
benchmarks find them without ``data_dir``. Each file is ``<name>.jsonl`` or ``<name>_e.jsonl``, one record per
line with the official fields (input, context, answers, length, dataset, language, all_classes, _id). The files
come from ``datasets.load_dataset("THUDM/LongBench", name, split="test")`` or, when the installed ``datasets``
cannot run the repository's loading script, from the repository's ``data.zip``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qpruning.benchmarks.common import hub_reachable  # noqa: E402
from qpruning.benchmarks.longbench import ALL_DATASETS, E_DATASETS  # noqa: E402
from qpruning.benchmarks.longbench import data as lb_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default: {lb_data.default_dir()})"
    )
    parser.add_argument(
        "--only",
        choices=("longbench", "longbench_e"),
        default=None,
        help="fetch one of the two (default: both)",
    )
    parser.add_argument("--datasets", nargs="+", default=None, help="dataset names (default: all of each)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    out = args.out or lb_data.default_dir()
    if not hub_reachable(10.0, repo=lb_data.HUB_REPO):
        logging.error(
            "The Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set): run this on a machine with internet"
        )
        return 1
    parts = [("longbench", False, ALL_DATASETS), ("longbench_e", True, E_DATASETS)]
    written = []
    for name, e, valid in parts:
        if args.only and args.only != name:
            continue
        datasets = [d for d in (args.datasets or valid) if d in valid]
        unknown = [d for d in (args.datasets or []) if d not in ALL_DATASETS]
        if unknown:
            parser.error(f"unknown dataset(s) {', '.join(unknown)}; valid: {', '.join(ALL_DATASETS)}")
        if not datasets:
            continue
        try:
            paths = lb_data.download(datasets, e=e, out_dir=out)
        except Exception as exc:
            logging.error("%s: download failed: %s", name, exc)
            return 1
        missing = sorted(set(datasets) - set(paths))
        if missing:
            logging.error("%s: not found on the hub: %s", name, ", ".join(missing))
        written += list(paths.values())
    print(f"{len(written)} files in {out}")
    print(f"Use them with: benchmark.data_dir={out}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
