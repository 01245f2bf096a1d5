"""NIAH heatmaps (Kamradt style): context length x needle depth, colour = score, one panel per run.

One PNG per (model, pruner, benchmark, budget- or tokens-given): rows are budgets (or kept tokens), columns the
precision; quantizer variants are merged by the tables' preference (the paper's quantizer). When runs of both
compat modes exist, one PNG per mode (named and titled with it).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import labels
from ..collect import read_predictions
from ..labels import is_missing
from ..paper import PaperNumbers
from ..plotting import KAMRADT_CMAP, SCORE_LABEL, FigureResult
from ..selection import (
    key_tuples,
    match_key,
    one_precision,
    paper_quantizer_or_16bit,
    pick_runs,
    sorted_unique,
)
from .spec import Drawn, FigureSpec, Layout, Panel, Selection, render

RUN_COLUMNS = ("budget", "tokens", "tokens_nominal", "tokens_effective", "bits", "compat")


def _niah_grid(run_dir: str) -> pd.DataFrame:
    """Mean score per (context length, depth) of a NIAH run, from its predictions."""
    rows = []
    for record in read_predictions(run_dir):
        if record.get("status", "ok") != "ok" or is_missing(record.get("score")):
            continue
        extra = record.get("extra") or {}
        length: Any = extra.get("context_length", record.get("length"))
        depth: Any = extra.get("depth")
        if is_missing(length) or is_missing(depth):
            continue
        rows.append((float(length), float(depth), float(record["score"])))
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows, columns=["context_length", "depth", "score"])
    return frame.pivot_table(index="depth", columns="context_length", values="score", aggfunc="mean")


def _length_tick(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def _grid_points(group: dict[str, Any], run: Any, grid: pd.DataFrame) -> list[dict[str, Any]]:
    """The written points of one run's grid: one per (depth, context length)."""
    return [
        {
            "model": group["model"],
            "pruner": group["pruner"],
            "benchmark": group["benchmark"],
            **{k: run[k] for k in RUN_COLUMNS},
            "context_length": length,
            "depth": depth,
            "value": value,
            "samples": run["samples"],
            "run_path": run["run_path"],
        }
        for depth, row in grid.iterrows()
        for length, value in row.items()
    ]


def _group(d: pd.DataFrame, group: dict[str, Any]) -> Selection | None:
    """One PNG: the runs of a group with a grid, laid out as budgets (or tokens) x precision."""
    mode, compat = group["mode"], group.get("compat")
    row_key = "budget" if mode == "budget" else "tokens"
    row_values = sorted(d[row_key].dropna().unique())
    col_values = sorted(d["bits"].unique(), reverse=True)
    kept: dict[Any, pd.DataFrame] = {}  # run (index) -> its grid
    grids, data_rows = set(), []
    for index, run in d.iterrows():
        grid = _niah_grid(run["run_dir"])
        if grid.empty:
            continue
        kept[index] = grid
        grids.add((run[row_key], run["bits"]))
        data_rows += _grid_points(group, run, grid)
    if not grids:
        return None
    row_values = [r for r in row_values if any((r, b) in grids for b in col_values)]
    col_values = [b for b in col_values if any((r, b) in grids for r in row_values)]
    if not row_values or not col_values:  # e.g. pruner=none: neither a budget nor a token count to lay out
        return None
    model, pruner, bench = group["model"], group["pruner"], group["benchmark"]
    name = "niah_" + "_".join(
        str(x) for x in (model, pruner, bench if bench != "niah" else "", mode, compat) if x
    )
    return Selection(
        d.loc[list(kept)].assign(grid=list(kept.values())),
        [row_key, "bits"],
        [(r, b) for r in row_values for b in col_values],
        context={
            **group,
            "name": re.sub(r"[^A-Za-z0-9_.-]+", "-", name),
            "in_mode": f" · compat: {labels.label('compat', compat)}" if compat else "",
            "columns": len(col_values),
            "data": pd.DataFrame(data_rows),
        },
        count=len(grids),
    )


def select(runs: pd.DataFrame, paper: PaperNumbers | None = None) -> list[Selection]:
    """One selection per (model, pruner, benchmark, budget or tokens given[, compat]) with a NIAH grid."""
    c = runs[(runs["family"] == "niah") & runs["pruner"].notna() & one_precision(runs)]
    if c.empty:
        return []
    c = c.copy()
    c["mode"] = ["budget" if not is_missing(b) else "tokens" for b in c["budget"]]
    c = c[paper_quantizer_or_16bit(c)]
    several_modes = c["compat"].nunique() > 1
    group_keys = ["model", "pruner", "benchmark", "mode"] + (["compat"] if several_modes else [])
    picked = pick_runs(c, [*group_keys, "budget", "tokens", "bits"])
    selections = []
    for group in sorted_unique(key_tuples(picked, group_keys), group_keys):
        selection = _group(match_key(picked, group_keys, group), dict(zip(group_keys, group)))
        if selection is not None:
            selections.append(selection)
    return selections


def _no_run(ax: Any) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes, color="#777777")


def draw_panel(panel: Panel) -> None:
    if panel.rows.empty:
        _no_run(panel.ax)
        return
    ax, run, (rv, bits) = panel.ax, panel.rows.iloc[-1], panel.key
    grid = run["grid"]
    values = grid.to_numpy(dtype=float)
    if np.isnan(values).any():
        panel.drawn.marks.add("nan")
    cmap = KAMRADT_CMAP.with_extremes(bad="#d9d9d9")
    panel.drawn.image = ax.imshow(
        np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto", interpolation="nearest"
    )
    lengths, depths = list(grid.columns), list(grid.index)
    step = max(1, math.ceil(len(lengths) / 6))
    ax.set_xticks(range(0, len(lengths), step), [_length_tick(v) for v in lengths[::step]])
    dstep = max(1, math.ceil(len(depths) / 6))
    ax.set_yticks(range(0, len(depths), dstep), [f"{v:g}%" for v in depths[::dstep]])
    head = f"budget {labels.budget_label(rv)} · " if panel.selection.context["mode"] == "budget" else ""
    kept = labels.tokens_label(run["tokens_nominal"])
    nominal, effective = run["tokens_nominal"], run["tokens_effective"]
    # inputs shorter than the budget keep fewer tokens than asked for: say so
    fewer = (
        f" · {labels.tokens_label(round(float(effective)))} kept"
        if not is_missing(effective) and not is_missing(nominal) and effective < 0.95 * nominal
        else ""
    )
    ax.set_title(
        f"{head}{labels.setting_label(bits)}: {kept} tokens, {int(bits)}-bit\n"
        f"average {float(np.nanmean(values)):.1f}{fewer}"
    )


def finish(fig: Figure, axes: list[Any], selection: Selection, drawn: Drawn) -> None:
    """The shared axis labels and the colour bar."""
    fig.supxlabel("Context length (tokens)")
    fig.supylabel("Needle depth (% of the context)")
    if drawn.image is not None:
        nrows = len(axes) // selection.context["columns"]
        shrink = 0.9 if nrows <= 2 else 0.5
        fig.colorbar(
            drawn.image,
            ax=axes,
            label=SCORE_LABEL,
            shrink=shrink,
            aspect=max(20, 10 * nrows * shrink),
            pad=0.02,
        )


def _bench(selection: Selection, separator: str) -> str:
    bench = selection.context["benchmark"]
    return f"{separator}{labels.benchmark_label(bench)}" if bench != "niah" else ""


def heading(selection: Selection, drawn: Drawn) -> str:
    g = selection.context
    return (
        f"NIAH: {labels.model_label(g['model'])} · {labels.pruner_label(g['pruner'])}"
        + _bench(selection, " · ")
        + g["in_mode"]
    )


def title(selection: Selection, drawn: Drawn) -> str:
    g = selection.context
    return (
        f"NIAH heatmap: {labels.model_label(g['model'])}, {labels.pruner_label(g['pruner'])}"
        + _bench(selection, ", ")
        + (", by budget" if g["mode"] == "budget" else ", by kept tokens")
        + g["in_mode"].replace(" · ", ", ")
    )


def caption(selection: Selection, drawn: Drawn) -> str:
    return (
        "Needle retrieval score (0-100, red = missed, green = found) per context length and needle "
        "depth, one panel per run" + ("; grey: no sample at that point" if "nan" in drawn.marks else "") + "."
    )


SPEC = FigureSpec(
    name=lambda selection, drawn: selection.context["name"],
    title=title,
    heading=heading,
    caption=caption,
    select=select,
    draw_panel=draw_panel,
    layout=Layout(
        ncols=lambda selection: selection.context["columns"],
        panel=(3.6, 2.7),
        top=1.1,
        right=1.2,
        rc={"axes.grid": False, "axes.titlesize": 10},
    ),
    finish=finish,
    data=lambda selection: selection.context["data"],
)


def niah_heatmaps(runs: pd.DataFrame, out_dir: str | Path) -> list[FigureResult]:
    """The NIAH heatmaps (:data:`SPEC`): one PNG per (model, pruner, benchmark, budget or tokens given)."""
    return render(SPEC, runs, out_dir)
