"""Figure 9: layer-wise token-precision configurations, relative change (%) to the 4x4 baseline.

Runs with ``layer_config`` ``<bits>bit@<first>-<last>`` (those layers switched from 4x tokens at 4-bit to 2x at
8-bit or 1x at 16-bit) against the baseline run with the same model, pruner, benchmark, length and budget (or
tokens), no layer configuration and 4 bits. Panels per (model, pruner, budget) and benchmark.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.patches import Patch

from .. import labels
from ..labels import is_missing
from ..paper import PaperNumbers
from ..plotting import FigureResult, bar_group
from ..selection import key_tuples, match_key, one_precision, pick_runs, sorted_unique
from .spec import Drawn, FigureSpec, Layout, Panel, Selection, first, render

LAYER_CONFIG = re.compile(r"^(\d+)bit@(\d+)-(\d+)$")
MATCH_KEYS = ["model", "pruner", "benchmark", "benchmark_length", "budget", "tokens"]
PANEL_KEYS = ["model", "pruner", "budget", "tokens", "benchmark", "benchmark_length"]
COLORS = {8: labels.SETTING_COLORS[8], 16: labels.SETTING_COLORS[16], 2: labels.SETTING_COLORS[2]}


def _layered(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with a parsable ``layer_config``, with its ``layer_bits``, ``first`` and ``last`` layer."""
    layered = runs[runs["layer_config"].notna() & runs["score"].notna()].copy()
    if layered.empty:
        return layered
    parsed = [LAYER_CONFIG.match(str(v)) for v in layered["layer_config"]]
    layered = layered[[m is not None for m in parsed]].copy()
    matched = [m for m in parsed if m is not None]
    layered["layer_bits"] = [int(m.group(1)) for m in matched]
    layered["first"] = [int(m.group(2)) for m in matched]
    layered["last"] = [int(m.group(3)) for m in matched]
    return layered


def _point(run: Any, base: Any) -> dict[str, Any]:
    score, baseline = float(run["score"]), float(base["score"])
    return {
        **{k: run[k] for k in MATCH_KEYS},
        "layer_config": run["layer_config"],
        "layer_bits": run["layer_bits"],
        "first": run["first"],
        "last": run["last"],
        "score": score,
        "baseline": baseline,
        "value": 100.0 * (score - baseline) / baseline if baseline else math.nan,
        "samples": run["samples"],
        "n_runs": run["n_runs"],
        "run_path": run["run_path"],
        "baseline_run": base["run_path"],
    }


def select(runs: pd.DataFrame, paper: PaperNumbers | None = None) -> Selection | None:
    """Each layer-wise run against its 4x4 baseline (the runs without one are noted)."""
    layered = _layered(runs)
    if layered.empty:
        return None
    base_cands = runs[one_precision(runs) & (runs["bits"] == 4) & runs["score"].notna()]
    baselines = pick_runs(base_cands, MATCH_KEYS) if len(base_cands) else base_cands
    rows, notes = [], []
    for _, run in layered.iterrows():
        key = tuple(None if is_missing(run[k]) else run[k] for k in MATCH_KEYS)
        base = match_key(baselines, MATCH_KEYS, key) if len(baselines) else baselines
        if base.empty:
            notes.append(f"no 4x4 baseline for {run['run_path']} ({run['layer_config']})")
            continue
        rows.append(_point(run, base.iloc[0]))
    if not rows:
        return None
    data = pd.DataFrame(rows)
    return Selection(data, PANEL_KEYS, sorted_unique(key_tuples(data, PANEL_KEYS), PANEL_KEYS), notes)


def draw_panel(panel: Panel) -> None:
    ax, d = panel.ax, panel.rows
    ranges = d.sort_values(["first", "last"])[["first", "last"]].drop_duplicates()
    series = sorted(d["layer_bits"].unique())
    width = 0.8 / len(series)
    for i, (first_layer, last_layer) in enumerate(ranges.itertuples(index=False)):
        values = []
        for bits in series:
            v = d[(d["first"] == first_layer) & (d["last"] == last_layer) & (d["layer_bits"] == bits)][
                "value"
            ]
            values.append(("", float(v.iloc[0]) if len(v) else math.nan, COLORS.get(int(bits), "#333")))
        bar_group(ax, i, values, width)
    ax.axhline(0, color="#333333", linewidth=0.8)
    ax.set_xticks(range(len(ranges)), [f"{a}–{b}" for a, b in ranges.itertuples(index=False)])
    ax.set_xlabel("Modified layers")
    ax.set_ylabel("Change vs. 4x4 baseline (%)")
    ax.grid(axis="x", visible=False)
    model, pruner, budget, tokens, bench, length = panel.key
    where = f"budget {labels.budget_label(budget)}" if not is_missing(budget) else f"{int(tokens)} tokens"
    ax.set_title(
        f"{labels.benchmark_label(bench, length)} · {labels.model_label(model)}\n"
        f"{labels.pruner_label(pruner)} · {where} · baseline {d['baseline'].iloc[0]:.1f}"
    )


def legend(selection: Selection, drawn: Drawn) -> list[Any]:
    return [
        Patch(color=COLORS.get(int(b), "#333"), label=f"Modified layers at {labels.setting_label(b, False)}")
        for b in sorted(selection.points["layer_bits"].unique())
    ]


SPEC = FigureSpec(
    name="fig9_layers",
    title="Figure 9: layer-wise configurations",
    heading="Figure 9: layer-wise token-precision, relative to 4x tokens at 4-bit in every layer",
    caption=(
        "Relative change (%) of the score when the given layers keep 2x tokens at 8-bit or 1x tokens at "
        "16-bit instead of the baseline's 4x tokens at 4-bit (same memory), per benchmark."
    ),
    select=select,
    draw_panel=draw_panel,
    layout=Layout(ncols=2, panel=(5.6, 3.6), top=1.2),
    legend=legend,
    data=lambda selection: selection.points,
)


def figure9_layers(runs: pd.DataFrame, out_dir: str | Path) -> FigureResult | None:
    """Figure 9 (:data:`SPEC`): layer-wise configurations against their 4x4 baseline, per benchmark."""
    return first(render(SPEC, runs, out_dir))
