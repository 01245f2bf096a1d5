"""Run the table of bad inputs (``tests/bad_inputs.py``) and write what each one gets: exit status and message.

    python scripts/bad_inputs_table.py                       # -> results/reliability/bad_inputs.md
    python scripts/bad_inputs_table.py --commands            # also run the marked cases as real commands

Every case goes through the real entry (``qpruning.cli.main``) in this process, with a tripwire in place of
loading a model (as ``tests/test_bad_inputs.py`` does); ``--commands`` also runs the cases marked ``subprocess``
as fresh processes and records their exit status, their last stderr line, and whether ``loading model`` appeared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for name in ("QPRUNING_DEBUG", "HYDRA_FULL_ERROR"):
    os.environ.pop(name, None)

from bad_inputs import CASES, PREFIX, run_in_process, run_subprocess  # noqa: E402


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def outcome_row(index: int, case, outcome, seconds: float, tmp: Path) -> tuple[str, bool]:
    lines = outcome.error_lines()
    message = lines[0][len(PREFIX):] if lines else outcome.last_line()
    message = message.replace(str(tmp), "{tmp}")
    ok = (outcome.code == 2 and len(lines) == 1 and not outcome.model_loaded and case.mentions in message
          and "Traceback" not in outcome.stderr)
    loaded = "yes" if outcome.model_loaded else "no"
    return (f"| {index} | `{cell(case.command())}` | {outcome.code} | {loaded} | {seconds:.2f} | "
            f"{cell(message)} |"), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "results" / "reliability" / "bad_inputs.md"))
    parser.add_argument("--commands", action="store_true", help="also run the marked cases as real commands")
    args = parser.parse_args()
    rows, failures = [], []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bad_inputs_") as tmp:
        for index, case in enumerate(CASES, 1):
            begun = time.time()
            outcome = run_in_process(case, Path(tmp) / case.id)
            row, ok = outcome_row(index, case, outcome, time.time() - begun, Path(tmp) / case.id)
            rows.append(row)
            if not ok:
                failures.append(case.id)
        in_process = time.time() - started
        command_rows = []
        if args.commands:
            for index, case in enumerate([c for c in CASES if c.subprocess], 1):
                begun = time.time()
                outcome = run_subprocess(case, Path(tmp) / f"cmd-{case.id}")
                row, ok = outcome_row(index, case, outcome, time.time() - begun, Path(tmp) / f"cmd-{case.id}")
                command_rows.append(row)
                if not ok:
                    failures.append(f"{case.id} (command)")
    header = "| # | input | exit | model loaded | seconds | the one line after `qpruning: error:` |\n|---|---|---|---|---|---|"
    command = "python scripts/bad_inputs_table.py" + (" --commands" if args.commands else "")
    text = [
        "# Bad inputs: one line, exit 2, before the model loads",
        "",
        f"Command: `{command}` (the table is `tests/bad_inputs.py`; `tests/test_bad_inputs.py` asserts it).",
        f"Machine: 2-core CPU VM, no GPU ({platform.platform()}, Python {platform.python_version()}), shared with "
        "other jobs. Date: " + dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + ".",
        "",
        f"{len(CASES)} bad inputs, each through the real entry (`qpruning.cli.main`: the preflight, then Hydra's main "
        "and the task) in one process, with a tripwire in place of loading a model; every output folder under a "
        "temporary `output_root`. Each must exit with status 2, print exactly one `qpruning: error: <what was "
        "wrong>; <what is allowed>` line to stderr, as its last line, naming the key or file, with no traceback "
        f"and no model loaded. Result: {len(CASES) - len([f for f in failures if '(command)' not in f])} of "
        f"{len(CASES)} do, in {in_process:.0f} s in all.",
        "",
        header,
        *rows,
    ]
    if command_rows:
        text += [
            "",
            "## As real commands",
            "",
            "The marked cases as fresh processes (`python run.py`, `python -m qpruning.cli optimize`, "
            "`python -m qpruning.report`): \"model loaded\" is whether the `loading model` log line appeared.",
            "",
            header,
            *command_rows,
        ]
    if failures:
        text += ["", "Not as required: " + ", ".join(failures)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text) + "\n")
    print(f"{len(CASES)} bad inputs, {len(failures)} not as required -> {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
