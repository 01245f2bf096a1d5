"""``python -m qpruning.report RUNS... --out DIR``: the report of any number of run folders.

Examples::

    python -m qpruning.report multirun/ --out results/report
    python -m qpruning.report machine_a/multirun machine_b/outputs --out /tmp/report \\
        --throughput results/throughput/a100.csv --wandb --wandb-run-id abc123
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from qpruning.errors import MissingFileError, check_writable_folder, reported

from .build import build_report, push_to_wandb
from .collect import find_run_dirs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m qpruning.report",
        description="Gather run folders (metrics.json, predictions.jsonl) into the paper's tables and figures.",
    )
    parser.add_argument(
        "runs", nargs="+", help="run folders, sweep folders or result files (searched recursively)"
    )
    parser.add_argument("--out", required=True, help="report folder (created; index.md is its entry page)")
    parser.add_argument(
        "--throughput",
        action="append",
        default=[],
        metavar="CSV",
        help="throughput benchmark CSV for Table 4 (repeatable; format in docs/report.md)",
    )
    parser.add_argument(
        "--paper",
        default=None,
        metavar="DIR",
        help="folder of the paper's numbers (default: results/paper of this checkout)",
    )
    parser.add_argument("--no-paper", action="store_true", help="leave the paper's numbers out")
    parser.add_argument("--wandb", action="store_true", help="also log the tables and figures to W&B")
    parser.add_argument("--wandb-project", default=None, help="W&B project (default: qpruning)")
    parser.add_argument("--wandb-entity", default=None, help="W&B entity")
    parser.add_argument(
        "--wandb-group", default=None, help="W&B group (default: the runs' experiment, the group of their W&B runs)"
    )
    parser.add_argument(
        "--wandb-run-id", default=None, help="resume this W&B run (the sweep's) instead of a new one"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    """What the report needs before it reads anything: run folders (or throughput files) that exist, a ``--paper``
    folder that exists, an ``--out`` folder it can write."""
    missing = [path for path in [*args.throughput, *([args.paper] if args.paper else [])] if not Path(path).exists()]
    if missing:
        raise MissingFileError(f"{missing[0]} does not exist", "allowed: --throughput CSV files and a --paper folder "
                               "that exist")
    if not args.throughput and not find_run_dirs(args.runs):
        raise MissingFileError(
            f"no run folders under {', '.join(args.runs)}",
            "allowed: run or sweep folders that hold metrics.json or predictions.jsonl (e.g. outputs/)",
        )
    check_writable_folder("--out", args.out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    with reported():
        check_inputs(args)
    command = "python -m qpruning.report " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    report = build_report(
        args.runs,
        args.out,
        throughput=args.throughput,
        paper=args.paper,
        use_paper=not args.no_paper,
        command=command,
    )
    summary = report.summary()
    if args.wandb:
        run_id = push_to_wandb(
            report, project=args.wandb_project, run_id=args.wandb_run_id, entity=args.wandb_entity,
            group=args.wandb_group,
        )
        summary += f"; logged to W&B run {run_id}"
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
