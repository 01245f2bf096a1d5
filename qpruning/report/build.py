"""Run folders in, report folder out: collect, tabulate, plot, index (and optionally push to W&B)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qpruning.identity import KEY_FIELDS

from .collect import Collection, collect_runs
from .figures import FigureResult, build_figures
from .index import write_index
from .paper import PaperNumbers, load_paper
from .render import ReportTable, write_table
from .tables import build_tables
from .throughput import read_throughput

logger = logging.getLogger(__name__)

_RUNS_CSV_COLUMNS = (
    "status",
    "kept",
    "n_runs",
    "duplicate_of",
    "superseded",
    *KEY_FIELDS,  # the run's identity (qpruning.identity)
    "tokens_effective",
    "experiment",
    "score",
    "samples",
    "failed",
    "samples_done",
    "failed_done",
    "kv_bytes",
    "kv_bytes_full",
    "compression",
    "seconds",
    "finished",
    "run_path",
    "overrides",
    "task_scores",
    "category_scores",
    "length_scores",
)


@dataclass
class Report:
    """What :func:`build_report` wrote.

    Attributes:
        out_dir: the report folder.
        collection: the runs found (``collection.runs``: the ones used).
        tables: each table by name, None where no run fits.
        figures: each figure by name (``niah``: a list), None / empty where no run fits.
        files: every written file.
        index: ``index.md``.
        problems: unreadable inputs and other issues, one line each.
    """

    out_dir: Path
    collection: Collection
    tables: dict[str, ReportTable | None]
    figures: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    index: Path | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def written_tables(self) -> list[ReportTable]:
        return [t for t in self.tables.values() if t is not None]

    @property
    def written_figures(self) -> list[FigureResult]:
        out: list[FigureResult] = []
        for value in self.figures.values():
            if isinstance(value, list):
                out.extend(value)
            elif value is not None:
                out.append(value)
        return out

    def summary(self) -> str:
        """One line: what was written and what is missing."""
        c = self.collection
        absent = [n for n, t in self.tables.items() if t is None] + [
            n for n, f in self.figures.items() if not f
        ]
        return (
            f"report: {len(self.written_tables)} tables, {len(self.written_figures)} figures from {len(c.runs)} runs "
            f"({len(c.partial)} partial, {len(c.duplicates)} duplicates not used)"
            + (f"; no runs yet for {', '.join(absent)}" if absent else "")
            + f" -> {self.index}"
        )


def write_runs_csv(collection: Collection, path: Path) -> Path:
    """Every run folder found, one row each, with its status (complete / partial, kept / duplicate)."""
    df = collection.all_runs
    frame = pd.DataFrame({c: df[c] if c in df.columns else None for c in _RUNS_CSV_COLUMNS})
    for column in ("task_scores", "category_scores", "length_scores"):
        frame[column] = [
            json.dumps(v, sort_keys=True) if isinstance(v, dict) and v else "" for v in frame[column]
        ]
    frame.to_csv(path, index=False, na_rep="")
    return path


def build_report(
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    throughput: Sequence[str | os.PathLike[str]] = (),
    paper: PaperNumbers | str | os.PathLike[str] | None = None,
    use_paper: bool = True,
    command: str | None = None,
) -> Report:
    """Gather the runs under ``inputs`` and write every table and figure that has data, and ``index.md``.

    Args:
        inputs: run folders, sweep folders or result files (searched recursively).
        out_dir: the report folder (created; files of the same names are overwritten).
        throughput: throughput benchmark CSV files for Table 4.
        paper: the paper's numbers, or the folder of their CSV files (default: ``results/paper``).
        use_paper: False to leave the paper out (no comparison columns).
        command: the command line, recorded in the index.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    collection = collect_runs(inputs)
    problems = list(collection.problems)
    numbers: PaperNumbers | None = None
    if use_paper:
        numbers = paper if isinstance(paper, PaperNumbers) else load_paper(paper)
    throughput_frame, throughput_problems = read_throughput(throughput)
    problems += throughput_problems
    runs = collection.runs
    tables = build_tables(runs, numbers, throughput_frame)
    files: list[Path] = []
    table_files: dict[str, dict[str, Path]] = {}
    for name, table in tables.items():
        if table is None:
            continue
        paths = write_table(table, out)
        comparison = table.comparison()
        if comparison is not None:
            for kind, path in write_table(comparison, out).items():
                if kind in ("md", "csv", "tex"):
                    paths[f"vs paper {kind}"] = path
        table_files[name] = paths
        files += list(paths.values())
    figures = build_figures(runs, out, numbers)
    for value in figures.values():
        for result in value if isinstance(value, list) else [value]:
            if result is not None:
                files += [result.path, result.data_path, *result.extra_files.values()]
    files.append(write_runs_csv(collection, out / "runs.csv"))
    paper_dir = numbers.directory if numbers else None
    index = write_index(
        out,
        collection,
        tables,
        table_files,
        figures,
        command=command,
        paper_dir=paper_dir if numbers else None,
        throughput_files=[str(t) for t in throughput],
        problems=problems,
    )
    files.append(index)
    report = Report(
        out_dir=out,
        collection=collection,
        tables=tables,
        figures=figures,
        files=files,
        index=index,
        problems=problems,
    )
    logger.info(report.summary())
    return report


def report_group(report: Report) -> str | None:
    """The W&B group of the runs a report covers: their experiment (sweep) name, when they share one."""
    runs = report.collection.runs
    names = sorted({str(v) for v in runs["experiment"].dropna()}) if "experiment" in runs else []
    return names[0] if len(names) == 1 else ("+".join(names) or None)


def push_to_wandb(
    report: Report,
    project: str | None = None,
    run_id: str | None = None,
    entity: str | None = None,
    group: str | None = None,
) -> str:
    """Log the report's tables (as W&B tables) and figures (as images) to a W&B run, and the folder as an artifact.

    The run joins the W&B group of the sweep (``group``, by default the runs' experiment name: the group their
    own W&B runs are in). With ``run_id`` the sweep's run is resumed (``resume="allow"``) so the report lands
    next to its metrics; otherwise a new run of job type ``report`` is created. Honours ``WANDB_MODE``
    (``offline`` in tests) and goes offline by itself without a network (:func:`qpruning.loggers.wandb_init`).
    Returns the run's id.
    """
    import wandb  # only when asked: wandb is slow to import and may want a login

    from qpruning.loggers import wandb_init

    from .render import to_csv_frame

    group = group or report_group(report)
    run = wandb_init(
        project=project or "qpruning",
        entity=entity,
        group=group,
        name=None if run_id else f"report-{group or 'runs'}",
        id=run_id,
        resume="allow" if run_id else None,
        job_type="report",
    )
    try:
        payload: dict[str, Any] = {}
        for table in report.written_tables:
            frame = to_csv_frame(table).astype(object).where(lambda d: d.notna(), None)
            payload[f"report/{table.name}"] = wandb.Table(dataframe=frame)
        for figure in report.written_figures:
            payload[f"report/{figure.name}"] = wandb.Image(str(figure.path), caption=figure.title)
        run.log(payload)
        artifact = wandb.Artifact("qpruning-report", type="report")
        for path in report.files:
            if path.is_file():
                artifact.add_file(str(path), name=path.name)
        run.log_artifact(artifact)
        return str(run.id)
    finally:
        run.finish()
