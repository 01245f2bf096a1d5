"""The ``qpruning`` command: ``qpruning run|optimize [Hydra overrides]`` and ``qpruning report RUNS --out DIR``.

``run`` and ``optimize`` are Hydra applications whose configurations live in the repository's ``conf/`` folder
(``config.yaml`` and ``optimize.yaml``); ``report`` is ``python -m qpruning.report``.
"""

from __future__ import annotations

import sys

from qpruning.entry import hydra_entry, optimize_task, run_task

USAGE = """usage: qpruning COMMAND [ARGS]

commands:
  run [overrides]        one run or a grid (-m) of model x compressor x benchmark (same as python run.py)
  optimize [overrides]   search a per-layer token-precision allocation for a budget (conf/optimize.yaml)
  report RUNS --out DIR  tables and figures from result folders (python -m qpruning.report --help)

A mistake in the configuration, the data or a path is one line on stderr (qpruning: error: ...) and exit
status 2; add --debug (or QPRUNING_DEBUG=1) for the traceback.
"""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "run":
        hydra_entry("config", run_task, rest, "qpruning-run")
    elif command == "optimize":
        hydra_entry("optimize", optimize_task, rest, "qpruning-optimize")
    elif command == "report":
        from qpruning.report.__main__ import main as report_main

        raise SystemExit(report_main(rest))
    else:
        raise SystemExit(f"unknown command {command!r}\n\n{USAGE}")


if __name__ == "__main__":
    main()
