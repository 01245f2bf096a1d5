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
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for name in ("QPRUNING_DEBUG", "HYDRA_FULL_ERROR", "TRITON_INTERPRET"):  # kernel=on: no Triton interpreter
    os.environ.pop(name, None)

from bad_inputs import CASES, PREFIX, run_in_process, run_subprocess  # noqa: E402


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def verdict(case, outcome) -> str:
    """``one line`` (as required), ``traceback``, ``accepted`` (exit 0 or the model loaded: a silent acceptance),
    ``written outside`` or ``other`` (another exit status, several lines, or a line that does not name the key)."""
    lines = outcome.error_lines()
    if "Traceback" in outcome.stderr:
        return "traceback"
    if outcome.model_loaded or outcome.code == 0:
        return "accepted"
    if outcome.outside:
        return "written outside"
    if outcome.code == 2 and len(lines) == 1 and outcome.last_line() == lines[0] and case.mentions in lines[0]:
        return "one line"
    return "other"


def outcome_row(index: int, case, outcome, seconds: float, tmp: Path) -> tuple[str, str]:
    lines = outcome.error_lines()
    message = lines[0][len(PREFIX):] if lines else outcome.last_line()
    message = message.replace(str(tmp), "{tmp}")
    loaded = "yes" if outcome.model_loaded else "no"
    outside = len(outcome.outside)
    return (f"| {index} | `{cell(case.command())}` | {outcome.code} | {loaded} | {outside} | {seconds:.2f} | "
            f"{cell(message)} |"), verdict(case, outcome)


HEADER = ("| # | input | exit | model loaded | files outside the output root | seconds | the one line after "
          "`qpruning: error:` |\n|---|---|---|---|---|---|---|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "results" / "reliability" / "bad_inputs.md"))
    parser.add_argument("--commands", action="store_true", help="also run the marked cases as real commands")
    args = parser.parse_args()
    sections: dict[str, list[str]] = {}
    verdicts: dict[str, str] = {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bad_inputs_") as tmp:
        for index, case in enumerate(CASES, 1):
            begun = time.time()
            outcome = run_in_process(case, Path(tmp) / case.id)
            row, verdicts[case.id] = outcome_row(index, case, outcome, time.time() - begun, Path(tmp) / case.id)
            sections.setdefault(case.group, []).append(row)
        in_process = time.time() - started
        command_rows = []
        if args.commands:
            for index, case in enumerate([c for c in CASES if c.subprocess], 1):
                begun = time.time()
                outcome = run_subprocess(case, Path(tmp) / f"cmd-{case.id}")
                row, verdicts[f"{case.id} (command)"] = outcome_row(index, case, outcome, time.time() - begun,
                                                                   Path(tmp) / f"cmd-{case.id}")
                command_rows.append(row)
    counts = Counter(value for key, value in verdicts.items() if not key.endswith(" (command)"))
    commands = Counter(value for key, value in verdicts.items() if key.endswith(" (command)"))
    failures = [key for key, value in verdicts.items() if value != "one line"]
    command = "python scripts/bad_inputs_table.py" + (" --commands" if args.commands else "")
    text = [
        "# Bad inputs: one line, exit 2, before the model loads",
        "",
        f"Command: `{command}` (the table is `tests/bad_inputs.py`; `tests/test_bad_inputs.py` asserts it).",
        f"Machine: 2-core CPU VM, no GPU ({platform.platform()}, Python {platform.python_version()}), shared with "
        "other jobs. Date: " + dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + ".",
        "",
        f"{len(CASES)} bad inputs in {len(sections)} classes, each through the real entry (`qpruning.cli.main`: the "
        "preflight, then Hydra's main and the task) in one process, with a tripwire in place of loading a model; "
        "every output folder under a temporary `output_root` inside the case's own folder. Each must exit with "
        "status 2, print exactly one `qpruning: error: <what was wrong>; <what is allowed>` line to stderr, as its "
        "last line, naming the key or file, with no traceback, no model loaded and no file written in the case's "
        f"folder outside its output root. Result: {counts['one line']} of {len(CASES)} do, in {in_process:.0f} s "
        f"in all; tracebacks: {counts['traceback']}; silently accepted (exit 0 or a model loaded): "
        f"{counts['accepted']}; files written outside the output root: {counts['written outside']}; other: "
        f"{counts['other']}."
        + (f" As real commands: {commands['one line']} of {sum(commands.values())} do." if commands else ""),
        "",
        "| class | cases |",
        "|---|---|",
        *[f"| {group} | {len(rows)} |" for group, rows in sections.items()],
    ]
    for group, rows in sections.items():
        text += ["", f"## {group}", "", HEADER, *rows]
    if command_rows:
        text += [
            "",
            "## As real commands",
            "",
            "The marked cases as fresh processes (`python run.py`, `python -m qpruning.cli optimize`, "
            "`python -m qpruning.report`): \"model loaded\" is whether the `loading model` log line appeared.",
            "",
            HEADER,
            *command_rows,
        ]
    if failures:
        text += ["", "Not as required: " + ", ".join(f"{key} ({verdicts[key]})" for key in failures)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text) + "\n")
    print(f"{len(CASES)} bad inputs, {len(failures)} not as required -> {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
