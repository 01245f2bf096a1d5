#!/usr/bin/env python
"""Download the QA sources of RULER's qa_1 / qa_2 for offline runs: SQuAD v2.0 dev and HotpotQA dev distractor.

Run on a machine with internet, copy the folder, and point the benchmark at it::

    python scripts/download_ruler_qa.py --out DIR
    python run.py benchmark=ruler benchmark.qa_data_dir=DIR

It writes ``squad.json`` and ``hotpotqa.json``, the files (and names) of RULER's
``scripts/data/synthetic/json/download_qa_dataset.sh``. ``--source official`` fetches them from their original
URLs, ``--source hub`` from the Hugging Face hub (``rajpurkar/squad_v2``, ``hotpotqa/hotpot_qa`` distractor,
converted to the official schema); ``auto`` (default) tries the URLs first. Without ``--out`` the files go to the
qpruning cache (``~/.cache/qpruning/data/ruler_qa``), where RULER finds them without ``qa_data_dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qpruning.benchmarks.common import hub_reachable  # noqa: E402
from qpruning.benchmarks.ruler import qa  # noqa: E402


def fetch_official(dataset: str, out: Path, timeout: float = 60.0) -> Path:
    """Download the official JSON file of ``dataset`` and check that it parses."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / qa.FILES[dataset]
    tmp = path.with_name(f".{path.name}.part")
    with urllib.request.urlopen(qa.URLS[dataset], timeout=timeout) as response, open(tmp, "wb") as handle:  # noqa: S310
        while chunk := response.read(1 << 20):
            handle.write(chunk)
    json.loads(tmp.read_text(encoding="utf-8"))
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: {qa.default_dir()})")
    parser.add_argument("--source", choices=("auto", "official", "hub"), default="auto")
    parser.add_argument("--datasets", nargs="+", choices=tuple(qa.FILES), default=list(qa.FILES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = args.out or qa.default_dir()

    failures = 0
    for dataset in args.datasets:
        path = None
        if args.source in ("auto", "official"):
            try:
                path = fetch_official(dataset, out)
            except Exception as exc:
                logging.warning("%s: %s failed (%s)", dataset, qa.URLS[dataset], exc)
        if path is None and args.source in ("auto", "hub"):
            if not hub_reachable(10.0, repo=qa.HUB[dataset][0]):
                logging.error("%s: the Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set)", dataset)
                failures += 1
                continue
            try:
                path = qa.download_from_hub(dataset, out)
            except Exception as exc:
                logging.warning("%s: hub download failed (%s)", dataset, exc)
        if path is None:
            failures += 1
            continue
        questions, documents = qa.READERS[dataset](path)
        print(f"{dataset}: {path} ({len(questions)} answerable questions, {len(documents)} documents)")
    print(f"Use them with: benchmark.qa_data_dir={out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
