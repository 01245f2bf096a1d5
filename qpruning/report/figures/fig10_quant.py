"""Figure 10: quantization strategies (FlexGen, +outliers, KIVI, +outliers) per pruner and model.

Runs: ``tokens`` given, quantized, group size 64, no layer configuration. Panels per (model, benchmark, tokens,
bits), with the pruners that were run with two strategies or more (paper: 512 tokens, 4-bit, LongBench, SnapKV
and PyramidKV). The 16-bit run with the same tokens, when present, is drawn as a grey bar.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.patches import Patch

from .. import labels
from ..paper import PaperNumbers
from ..plotting import FULL_PRECISION_COLOR, QUANT_COLORS, FigureResult, bar_group
from ..selection import key_tuples, one_precision, pick_runs, sorted_unique
from .spec import Drawn, FigureSpec, Layout, Panel, Selection, first, render

PANEL_KEYS = ["model", "benchmark", "tokens", "bits"]


def select(runs: pd.DataFrame, paper: PaperNumbers | None = None) -> Selection | None:
    """Quantized token runs of the pruners run with two strategies or more; the 16-bit runs as the reference."""
    c = runs[
        runs["tokens"].notna()
        & (runs["bits"] < 16)
        & (runs["group_size"] == labels.DEFAULT_GROUP_SIZE)
        & runs["quant"].notna()
        & runs["pruner"].notna()
        & (runs["pruner"] != "none")
        & one_precision(runs)
        & runs["score"].notna()
    ]
    if c.empty:
        return None
    picked = pick_runs(c, [*PANEL_KEYS, "pruner", "quant"])
    # An ablation compares strategies for the same pruner: keep the pruners run with two strategies or more
    # (Table 1's Ada-KV / HeadKV runs use FlexGen where the others use KIVI: that is not an ablation).
    strategies = picked.groupby([*PANEL_KEYS, "pruner"], dropna=False)["quant"].transform("nunique")
    picked = picked[strategies > 1]
    if picked.empty:
        return None
    full = runs[(runs["bits"] == 16) & runs["tokens"].notna() & one_precision(runs)]
    panels = sorted_unique(key_tuples(picked, PANEL_KEYS), PANEL_KEYS)
    return Selection(picked, PANEL_KEYS, panels, context={"full": full})


def _reference(full: pd.DataFrame, panel: Panel, pruners: list[str]) -> dict[str, float]:
    """The 16-bit score with the panel's model, benchmark and tokens, per pruner that has one."""
    model, bench, tokens, _bits = panel.key
    reference = {}
    for pruner in pruners:
        ref = full[
            (full["model"] == model)
            & (full["benchmark"] == bench)
            & (full["tokens"] == tokens)
            & (full["pruner"] == pruner)
        ]
        if len(ref):
            reference[pruner] = float(pick_runs(ref, ["model"]).iloc[0]["score"])
    return reference


def draw_panel(panel: Panel) -> None:
    ax, d, drawn = panel.ax, panel.rows, panel.drawn
    pruners = sorted(d["pruner"].unique(), key=lambda v: labels.sort_value("pruner", v))
    quants = sorted(d["quant"].unique(), key=lambda v: labels.sort_value("quant", v))
    drawn.quants.update(quants)
    reference = _reference(panel.selection.context["full"], panel, pruners)
    width = 0.84 / (len(quants) + (1 if reference else 0))
    for i, pruner in enumerate(pruners):
        values = []
        if reference:
            values.append(("16-bit", reference.get(pruner, math.nan), FULL_PRECISION_COLOR))
            drawn.marks.add("full")
        for quant in quants:
            v = d[(d["pruner"] == pruner) & (d["quant"] == quant)]["score"]
            values.append(("", float(v.iloc[0]) if len(v) else math.nan, QUANT_COLORS.get(quant, "#333")))
        bar_group(ax, i, values, width, annotate=True)
    ax.set_xticks(range(len(pruners)), [labels.pruner_label(p) for p in pruners])
    ax.set_ylabel(f"{labels.benchmark_label(panel.key[1])} score (0–100)")
    top = max([d["score"].max(), *reference.values()])
    ax.set_ylim(0, min(105, top * 1.2))
    ax.grid(axis="x", visible=False)
    model, _bench, tokens, bits = panel.key
    ax.set_title(f"{labels.model_label(model)} · {int(tokens)} tokens, {int(bits)}-bit")


def legend(selection: Selection, drawn: Drawn) -> list[Any]:
    handles: list[Any] = [
        Patch(color=QUANT_COLORS.get(q, "#333"), label=labels.quant_label(q))
        for q in sorted(drawn.quants, key=lambda v: labels.sort_value("quant", v))
    ]
    if "full" in drawn.marks:
        handles.insert(0, Patch(color=FULL_PRECISION_COLOR, label="16-bit (no quantization)"))
    return handles


SPEC = FigureSpec(
    name="fig10_quant",
    title="Figure 10: quantization strategies",
    heading="Figure 10: quantization strategies in quantized pruning",
    caption=(
        "Score per pruner for each quantization strategy (FlexGen: keys and values per token; KIVI: keys "
        "per channel; +Outlier 1%: outliers kept in 16-bit), group size 64. Grey: the 16-bit run that "
        "keeps the same tokens (no quantization), for reference."
    ),
    select=select,
    draw_panel=draw_panel,
    layout=Layout(ncols=2, panel=(5.4, 3.8), top=1.2),
    legend=legend,
    columns=[*PANEL_KEYS, "pruner", "quant"],
)


def figure10_quant(runs: pd.DataFrame, out_dir: str | Path) -> FigureResult | None:
    """Figure 10 (:data:`SPEC`): score per pruner for each quantization strategy, the 16-bit run beside."""
    return first(render(SPEC, runs, out_dir))
