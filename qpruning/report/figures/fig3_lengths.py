"""Figure 3: score per input-length bucket and setting: LongBench-E buckets and RULER 4k / 8k / 16k.

Runs: ``budget`` given (paper: PyramidKV at 1/16), a pruner, the paper's quantizer. Panels per
(model, pruner, budget) and source (LongBench-E, RULER); bars per setting.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .. import labels
from ..paper import PaperNumbers
from ..plotting import SCORE_LABEL, FigureResult, bars_per_setting, setting_patches
from ..selection import budget_runs, key_tuples, match_key, pick_runs, rows_in, sorted_unique
from .spec import FigureSpec, Layout, Panel, Selection, first, render

PANEL_KEYS = ["model", "pruner", "budget", "source"]
SETTING_KEYS = ("model", "pruner", "budget", "bits")


def _bucket_order(bucket: str) -> float:
    match = re.match(r"(\d+)", bucket)
    return float(match.group(1)) if match else math.inf


def _point(run: Any, source: str, bucket: str, order: float, value: float) -> dict[str, Any]:
    return {
        **{k: run[k] for k in SETTING_KEYS},
        "source": source,
        "bucket": bucket,
        "order": order,
        "value": value,
        "samples": run["samples"],
        "n_runs": run["n_runs"],
        "run_path": run["run_path"],
    }


def select(runs: pd.DataFrame, paper: PaperNumbers | None = None) -> Selection | None:
    """One point per LongBench-E bucket and per RULER length; panels with two buckets or more."""
    c = budget_runs(runs)
    if not len(c):
        return None
    rows = []
    lbe = c[(c["family"] == "longbench_e")]
    for _, run in pick_runs(lbe, [*SETTING_KEYS, "benchmark"]).iterrows():
        for bucket, value in (run["length_scores"] or {}).items():
            rows.append(_point(run, "LongBench-E", str(bucket), _bucket_order(str(bucket)), float(value)))
    ruler = c[(c["family"] == "ruler") & c["benchmark_length"].notna()]
    for _, run in pick_runs(ruler, [*SETTING_KEYS, "benchmark_length"]).iterrows():
        length = run["benchmark_length"]
        rows.append(_point(run, "RULER", labels.length_label(length), float(length), float(run["score"])))
    if not rows:
        return None
    data = pd.DataFrame(rows)
    panels = sorted_unique(key_tuples(data, PANEL_KEYS), PANEL_KEYS)
    # a panel needs at least two buckets to say something about input length
    panels = [p for p in panels if match_key(data, PANEL_KEYS, p)["bucket"].nunique() > 1]
    return Selection(data, PANEL_KEYS, panels) if panels else None


def draw_panel(panel: Panel) -> None:
    ax, d = panel.ax, panel.rows
    buckets = d.sort_values("order")["bucket"].drop_duplicates().tolist()
    panel.drawn.bits.update(bars_per_setting(ax, d, "bucket", buckets, "value"))
    ax.set_xticks(range(len(buckets)), buckets)
    model, pruner, budget, source = panel.key
    ax.set_xlabel("Input length (tokens)" if source == "RULER" else "Input length bucket (tokens)")
    ax.set_ylabel(SCORE_LABEL)
    ax.set_ylim(0, min(100, max(10.0, d["value"].max() * 1.15)))
    ax.grid(axis="x", visible=False)
    ax.set_title(
        f"{source} · {labels.model_label(model)}\n{labels.pruner_label(pruner)} · budget "
        f"{labels.budget_label(budget)}"
    )


def points(selection: Selection) -> pd.DataFrame:
    drawn = rows_in(selection.points, selection.panels, selection.panel_keys)
    return drawn.drop(columns=["order"]).reset_index(drop=True)


SPEC = FigureSpec(
    name="fig3_lengths",
    title="Figure 3: input-length buckets",
    heading="Figure 3: token-precision trade-off across input lengths",
    caption=(
        "Score per input length at a fixed budget and setting: LongBench-E buckets (0-4k, 4-8k, 8k+ "
        "tokens, from `length_scores`) and RULER at 4k / 8k / 16k tokens."
    ),
    select=select,
    draw_panel=draw_panel,
    layout=Layout(ncols=2, panel=(5.0, 3.5), top=1.2),
    legend=lambda selection, drawn: setting_patches(sorted(drawn.bits)),
    data=points,
)


def figure3_lengths(runs: pd.DataFrame, out_dir: str | Path) -> FigureResult | None:
    """Figure 3 (:data:`SPEC`): score per input-length bucket, bars per setting."""
    return first(render(SPEC, runs, out_dir))
