"""``index.md``: every table and figure of a report, what is behind each, and what is missing.

The index is the page a visitor opens. It shows each table (with ours / the paper's / the difference where our
configuration matches a published cell, and the samples behind each cell), each figure with its caption and the
runs behind it, lists the tables and figures that have no runs yet with what they need, the partial runs with
the samples they have done, and the duplicated configurations with the run that was kept.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import labels
from .collect import Collection
from .labels import is_missing
from .plotting import FigureResult
from .render import ReportTable, frame_markdown, to_markdown

TABLE_NEEDS: dict[str, tuple[str, str]] = {
    "table1": (
        "Table 1: pruner x tokens x bits (LongBench, NIAH)",
        "LongBench or NIAH runs with a pruner and `tokens` given (128 / 512 / 2048), at 16 / 8 / 4 / 2 bits "
        "with the paper's quantizer (KIVI; FlexGen for Ada-KV and HeadKV), group size 64.",
    ),
    "table2": (
        "Table 2: task categories and RULER-8k per setting",
        "PyramidKV runs with a `budget` (paper: 1/16) at 16 / 8 / 4 bits: LongBench (category scores) and/or "
        "RULER at 8k tokens.",
    ),
    "table3": (
        "Table 3: quantization group size",
        "LongBench runs with `tokens` given, KIVI, at group sizes 32 / 64 / 128 (a row appears once a group "
        "size other than 64 exists).",
    ),
    "table4": (
        "Table 4: throughput and KV memory per batch item",
        "a throughput benchmark CSV (`--throughput FILE.csv`, format in docs/report.md); LongBench / NIAH "
        "averages are joined from runs with the same model, pruner, tokens and bits.",
    ),
    "compat_modes": (
        "Compat modes side by side (methods vs. the paper's code)",
        "the same configuration run with `compat=methods` and with `compat=paper` (docs/fidelity.md).",
    ),
    "rotation": (
        "Rotated against unrotated quantization",
        "runs of a rotated quantizer (`quant=kivi_rot`, any `X_rot`) beside runs of `X` with the same pruner and "
        "budget (or tokens), at 16 / 8 / 4 / 2 bits.",
    ),
    "tiers": (
        "Precision per token against one precision at the same budget",
        "runs with `quant.tiers` beside runs of the same pruner, quantizer and budget at 16 / 8 / 4 bits, with "
        "bootstrap intervals.",
    ),
    "quantizers": (
        "Quantizers beyond the paper's against KIVI at the same budget",
        "runs of a quantizer outside the paper's (e.g. `quant=kvquant`) beside runs of other quantizers with the same "
        "pruner and budget (`budget_mode=exact`: the same bytes), with bootstrap intervals.",
    ),
}
FIGURE_NEEDS: dict[str, tuple[str, str]] = {
    "fig1": (
        "Figure 1: cross-entropy against compression",
        "`crossentropy` runs: pruning only (16-bit, several token counts), quantization only (`pruner=none`, "
        "several bits), quantized pruning.",
    ),
    "fig2": (
        "Figure 2: score against memory budget (1x16, 2x8, 4x4)",
        "runs with a `budget` at 16, 8 and 4 bits, with a pruner (paper: SnapKV, PyramidKV; budgets 1/128 to "
        "1/4) on LongBench / NIAH / RULER (any benchmark but cross-entropy; both compat modes in separate panels).",
    ),
    "fig3": (
        "Figure 3: input-length buckets",
        "runs with a `budget`: LongBench-E (`length_scores`) and/or RULER at two lengths or more "
        "(4k / 8k / 16k).",
    ),
    "fig4": (
        "Figure 4: model scale",
        "PyramidKV LongBench runs at budget 1/64 or 1/16 for two Llama models or more "
        "(llama32_1b, llama32_3b, llama3_8b, llama3_70b; `_base` / `_instruct`).",
    ),
    "fig9": (
        "Figure 9: layer-wise configurations",
        "runs with `layer_config` `<bits>bit@<first>-<last>` and their baseline: the same configuration with "
        "4 bits and no `layer_config`.",
    ),
    "fig10": (
        "Figure 10: quantization strategies",
        "runs with `tokens` given, quantized (e.g. 512 tokens, 4-bit) with two strategies or more among "
        "flexgen, flexgen_outlier, kivi, kivi_outlier, group size 64.",
    ),
    "niah": (
        "NIAH heatmaps (context length x depth)",
        "complete NIAH runs whose predictions carry `extra.context_length` and `extra.depth`.",
    ),
}


def _n(value: Any) -> Any:
    """The tables' key normalization (numbers as float, missing as None)."""
    if is_missing(value):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _relative(path: Path) -> str:
    """A path relative to the working directory when it is below it (reports are committed and moved)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _samples_summary(samples: pd.Series, unit: str = "per cell") -> str:
    values = pd.to_numeric(samples, errors="coerce").dropna()
    if values.empty:
        return "samples: unknown"
    lo, hi = int(values.min()), int(values.max())
    return f"{lo} samples {unit}" if lo == hi else f"{lo}–{hi} samples {unit}"


def _where(row: Any) -> str:
    if not is_missing(row.get("budget")):
        return f"budget {labels.budget_label(row['budget'])}"
    if not is_missing(row.get("tokens")):
        return f"{labels.tokens_label(row['tokens'])} tokens"
    return "–"


def _runs_overview(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "benchmark": [
                labels.benchmark_label(b, n) for b, n in zip(frame["benchmark"], frame["benchmark_length"])
            ],
            "model": frame["model"],
            "pruner": frame["pruner"],
            "quant": frame["quant"],
            "bits": frame["bits"],
            "group": frame["group_size"],
            "tokens / budget": [_where(r) for _, r in frame.iterrows()],
            "layers": frame["layer_config"],
            "compat": frame["compat"] if "compat" in frame else "methods",  # docs/fidelity.md
            "score": pd.to_numeric(frame["score"], errors="coerce"),
            "samples": frame["samples_done"],
            "failed": frame["failed_done"],
            "folder": ["`" + str(p) + "`" for p in frame["run_path"]],
        }
    )


def _table_section(name: str, table: ReportTable, files: dict[str, Path]) -> list[str]:
    out = [f'<a id="{name}"></a>', f"## {table.title}", "", table.caption, ""]
    filled, total = table.n_filled, table.n_layout_cells
    runs = table.cells["run_path"].dropna().nunique() if "run_path" in table.cells else 0
    out.append(
        f"{filled} of {total} cells filled, from {runs} run(s); {_samples_summary(table.cells['samples'])}."
    )
    out.append("")
    out.append(to_markdown(table))
    links = [f"[{kind}]({path.name})" for kind, path in files.items()]
    out += ["Files: " + " · ".join(links), ""]
    comparison = table.comparison()
    if comparison is not None:
        info = [
            c in table.info_cols
            for c in (tuple(_n(v) for v in r) for r in table.cells[table.col_keys].itertuples(index=False))
        ]
        diffs = table.cells.loc[[not x for x in info], "diff"].dropna()
        out += [
            "### Ours vs. the paper",
            "",
            f"{len(diffs)} cell(s) match a published cell (same model, benchmark, pruner, tokens or budget, bits, "
            f"quantizer); mean difference {diffs.mean():+.1f}, largest |difference| {diffs.abs().max():.1f}.",
            "",
            to_markdown(comparison),
        ]
    out += [
        "<details><summary>Samples behind each cell</summary>",
        "",
        to_markdown(table.samples_table()),
        "</details>",
        "",
    ]
    if table.missing:
        shown = table.missing[:200]
        more = len(table.missing) - len(shown)
        out += [f"<details><summary>Missing: {len(table.missing)} item(s)</summary>", ""]
        out += (
            [f"- {m}" for m in shown]
            + ([f"- ... and {more} more"] if more > 0 else [])
            + ["", "</details>", ""]
        )
    for note in table.notes:
        out.append(f"> Note: {note}")
    if table.notes:
        out.append("")
    return out


def _figure_section(result: FigureResult, heading: str = "##") -> list[str]:
    data = result.data
    runs = data["run_path"].dropna().nunique() if "run_path" in data else 0
    samples = _samples_summary(data["samples"], "each") if "samples" in data else ""
    out = [
        f'<a id="{result.name}"></a>',
        f"{heading} {result.title}",
        "",
        f"![{result.title}]({result.path.name})",
        "",
        result.caption,
        "",
        f"{result.panels} panel(s) from {runs} run(s) of {samples}. "
        f"Data: [{result.data_path.name}]({result.data_path.name})"
        + "".join(f" · {kind}: [{path.name}]({path.name})" for kind, path in result.extra_files.items())
        + ".",
        "",
    ]
    if result.details:
        out += [*result.details, ""]
    for note in result.notes:
        out.append(f"> Note: {note}")
    if result.notes:
        out.append("")
    return out


def write_index(
    out_dir: str | Path,
    collection: Collection,
    tables: dict[str, ReportTable | None],
    table_files: dict[str, dict[str, Path]],
    figures: dict[str, Any],
    *,
    command: str | None = None,
    paper_dir: Path | None = None,
    throughput_files: Sequence[str] = (),
    problems: Sequence[str] = (),
) -> Path:
    """Write ``index.md`` in ``out_dir`` and return its path."""
    out_dir = Path(out_dir)
    all_runs = collection.all_runs
    runs, partial, duplicates = collection.runs, collection.partial, collection.duplicates
    n_complete = int((all_runs["status"] == "complete").sum()) if len(all_runs) else 0
    now = _dt.datetime.now().isoformat(timespec="seconds")
    lines = [
        "# qpruning report",
        "",
        f"Generated {now}" + (f" by `{command}`" if command else "") + ".",
        "",
        f"Inputs: {', '.join('`' + s + '`' for s in collection.sources) or '–'}"
        + (
            f"; throughput: {', '.join('`' + str(t) + '`' for t in throughput_files)}"
            if throughput_files
            else ""
        )
        + ".",
        "",
        f"Run folders found: **{len(all_runs)}**: {n_complete} complete ({len(runs)} configurations used, "
        f"{len(duplicates)} duplicate(s) not used), **{len(partial)} partial** (not used, listed below).",
        "",
        (
            "Paper numbers: `" + _relative(paper_dir) + "` (typed from the paper; see its README)."
            if paper_dir
            else "Paper numbers: not loaded (no comparison columns)."
        ),
        "",
        'Missing cells are shown as "–" (empty in CSV files), never as 0. Scores are 0-100 (cross-entropy: nats).',
        "",
        "## Contents",
        "",
    ]
    absent: list[tuple[str, str, str]] = []
    for name, (title, needs) in TABLE_NEEDS.items():
        table = tables.get(name)
        if table is None:
            absent.append((name, title, needs))
            lines.append(f"- {title}: no runs yet")
        else:
            lines.append(f"- [{table.title}](#{name}): {table.n_filled} of {table.n_layout_cells} cells")
    for name, (title, needs) in FIGURE_NEEDS.items():
        figure = figures.get(name)
        if not figure:
            absent.append((name, title, needs))
            lines.append(f"- {title}: no runs yet")
        elif isinstance(figure, list):
            lines.append(f"- [{title}](#niah): {len(figure)} figure(s)")
        else:
            lines.append(f"- [{figure.title}](#{figure.name}): {figure.panels} panel(s)")
    lines += [
        f"- [Partial runs](#partial): {len(partial)}",
        f"- [Duplicates](#duplicates): {len(duplicates)}",
        f"- [Runs used](#runs): {len(runs)}",
        "",
    ]
    for name in TABLE_NEEDS:
        table = tables.get(name)
        if table is not None:
            lines += _table_section(name, table, table_files.get(name, {}))
    for name in FIGURE_NEEDS:
        figure = figures.get(name)
        if not figure:
            continue
        if isinstance(figure, list):
            lines += [
                '<a id="niah"></a>',
                "## NIAH heatmaps",
                "",
                "Kamradt's layout: context length (x) by needle depth (y), colour = retrieval score "
                "(red 0, yellow 50, green 100).",
                "",
            ]
            for result in figure:
                lines += _figure_section(result, heading="###")
        else:
            lines += _figure_section(figure)
    if absent:
        lines += ['<a id="absent"></a>', "## Not in this report yet (no runs)", ""]
        lines += [f"- **{title}**: needs {needs}" for _name, title, needs in absent]
        lines.append("")
    lines += ['<a id="partial"></a>', "## Partial runs (not used)", ""]
    if partial.empty:
        lines += ["None: every run folder has its `metrics.json`.", ""]
    else:
        lines += [
            "Folders with `predictions.jsonl` but no `metrics.json`: unfinished or crashed runs. They are "
            'not results; rerunning the same folder continues where it stopped. "complete elsewhere": '
            "a complete run with the same configuration exists (and is used).",
            "",
        ]
        frame = _runs_overview(partial).drop(columns=["score"])
        frame["complete elsewhere"] = ["yes" if s else "no" for s in partial["superseded"]]
        frame["last write"] = partial["finished"]
        frame["overrides"] = [
            "`" + o + "`" if isinstance(o, str) and o else "–" for o in partial["overrides"]
        ]
        lines += [frame_markdown(frame), ""]
    lines += ['<a id="duplicates"></a>', "## Duplicates (not used)", ""]
    if duplicates.empty:
        lines += ["None: no configuration was run twice.", ""]
    else:
        kept = runs.set_index("config_id")
        lines += [
            "Complete runs whose configuration key (benchmark, length, model, pruner, quant, bits, group "
            "size, tokens, budget, budget mode, layer config) equals a more recent complete run's. The most "
            "recent run (by the time `metrics.json` was written) is used; these are listed, never averaged.",
            "",
        ]
        frame = _runs_overview(duplicates)
        frame = frame.drop(columns=["failed"])
        kept_scores = [
            float(kept.loc[c, "score"]) if c in kept.index else math.nan for c in duplicates["config_id"]
        ]
        frame["kept score"] = kept_scores
        frame["Δ (kept − this)"] = [k - s for k, s in zip(kept_scores, pd.to_numeric(duplicates["score"]))]
        frame["kept run"] = ["`" + str(p) + "`" for p in duplicates["duplicate_of"]]
        frame["written"] = duplicates["finished"]
        lines += [frame_markdown(frame, digits=2), ""]
    lines += [
        '<a id="runs"></a>',
        "## Runs used",
        "",
        f"<details><summary>{len(runs)} complete configuration(s)</summary>",
        "",
        frame_markdown(_runs_overview(runs), digits=2),
        "</details>",
        "",
        "All run folders, with their status: [runs.csv](runs.csv).",
        "",
    ]
    if problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in problems] + [""]
    path = out_dir / "index.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
