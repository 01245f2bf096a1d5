"""The ``qpruning`` command: ``qpruning run|optimize [Hydra overrides]`` and ``qpruning report RUNS --out DIR``.

``run`` and ``optimize`` are Hydra applications whose configurations live in the repository's ``conf/`` folder
(``config.yaml`` and ``optimize.yaml``); ``report`` is ``python -m qpruning.report``.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
USAGE = """usage: qpruning COMMAND [ARGS]

commands:
  run [overrides]        one run or a grid (-m) of model x compressor x benchmark (same as python run.py)
  optimize [overrides]   search a per-layer token-precision allocation for a budget (conf/optimize.yaml)
  report RUNS --out DIR  tables and figures from result folders (python -m qpruning.report --help)
"""


def _hydra_app(config_name: str, task, args: list[str], prog: str) -> None:
    import hydra

    from qpruning.runner import register_resolvers

    if not (CONF_DIR / f"{config_name}.yaml").is_file():
        raise SystemExit(f"qpruning {prog} needs the repository's conf/ folder ({CONF_DIR} not found): "
                         "run it from a checkout installed with pip install -e .")
    register_resolvers()
    sys.argv = [f"qpruning-{prog}", *args]
    hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(task)()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "run":
        from qpruning.runner import run_job

        _hydra_app("config", run_job, rest, "run")
    elif command == "optimize":
        from qpruning.optimize.driver import run_optimize_job

        _hydra_app("optimize", run_optimize_job, rest, "optimize")
    elif command == "report":
        from qpruning.report.__main__ import main as report_main

        report_main(rest)
    else:
        raise SystemExit(f"unknown command {command!r}\n\n{USAGE}")


if __name__ == "__main__":
    main()
