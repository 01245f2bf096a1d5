"""Figure 4 (and the paper's Figure 5 at 1/16): LongBench score per model size, bars per setting.

Runs: LongBench, ``budget`` in ``budgets``, pruner in ``pruners``, models whose name starts with ``model_prefix``
(the Llama family). Panels per (variant: base / instruct, pruner, budget); a panel needs two models or more.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import labels
from ..paper import PaperNumbers
from ..plotting import FigureResult, bars_per_setting, setting_patches
from ..selection import budget_runs, key_tuples, match_key, pick_runs, sorted_unique
from .spec import FigureSpec, Layout, Panel, Selection, first, render

PANEL_KEYS = ["variant", "pruner", "budget", "benchmark"]


def select(
    runs: pd.DataFrame,
    paper: PaperNumbers | None = None,
    *,
    budgets: Sequence[float] = (1 / 64, 1 / 16),
    pruners: Sequence[str] = ("pyramidkv",),
    model_prefix: str = "llama",
) -> Selection | None:
    """LongBench budget runs of the model family at ``budgets``; panels with two models or more."""
    c = budget_runs(runs)
    if not len(c):
        return None
    wanted = {round(b, 12) for b in budgets}
    c = c[
        (c["family"] == "longbench")
        & c["pruner"].isin(list(pruners))
        & c["model"].astype(str).str.startswith(model_prefix)
        & np.array([round(float(b), 12) in wanted for b in c["budget"]], dtype=bool)
    ]
    if c.empty:
        return None
    picked = pick_runs(c, ["model", "pruner", "budget", "bits", "benchmark"])
    panels = sorted_unique(key_tuples(picked, PANEL_KEYS), PANEL_KEYS)
    panels = [p for p in panels if match_key(picked, PANEL_KEYS, p)["model"].nunique() > 1]
    return Selection(picked, PANEL_KEYS, panels) if panels else None


def draw_panel(panel: Panel) -> None:
    ax, d = panel.ax, panel.rows
    models = sorted(d["model"].unique(), key=lambda m: (labels.model_size(m), m))
    panel.drawn.bits.update(bars_per_setting(ax, d, "model", models, "score", annotate=True))
    ax.set_xticks(
        range(len(models)),
        [labels.model_label(m).replace("-Instruct", "\nInstruct").replace("-Base", "\nBase") for m in models],
    )
    ax.set_ylabel("LongBench score (0–100)")
    ax.set_ylim(0, min(100, d["score"].max() * 1.25))
    ax.grid(axis="x", visible=False)
    variant, pruner, budget, bench = panel.key
    ax.set_title(
        f"{variant.capitalize() if variant != 'other' else 'Models'} · "
        f"{labels.pruner_label(pruner)} · budget {labels.budget_label(budget)}"
        + (f" · {labels.benchmark_label(bench)}" if bench != "longbench" else "")
    )


SPEC = FigureSpec(
    name="fig4_scale",
    title="Figure 4: model scale",
    heading="Figure 4: quantized pruning across model scales (Llama family)",
    caption=(
        "LongBench score per model (sorted by parameter count) for each token-precision setting; the paper "
        "shows 1/64 (Figure 4) and 1/16 (Figure 5), PyramidKV. Numbers above the bars are the scores."
    ),
    select=select,
    draw_panel=draw_panel,
    layout=Layout(ncols=2, panel=(5.6, 3.8), top=1.2),
    legend=lambda selection, drawn: setting_patches(sorted(drawn.bits)),
    columns=["model", "variant", "pruner", "budget", "bits", "setting", "tokens_nominal"],
)


def figure4_scale(
    runs: pd.DataFrame,
    out_dir: str | Path,
    budgets: Sequence[float] = (1 / 64, 1 / 16),
    pruners: Sequence[str] = ("pyramidkv",),
    model_prefix: str = "llama",
) -> FigureResult | None:
    """Figure 4 (:data:`SPEC`) at ``budgets`` for ``pruners`` and the models named ``model_prefix...``."""
    chosen = functools.partial(select, budgets=budgets, pruners=pruners, model_prefix=model_prefix)
    return first(render(dataclasses.replace(SPEC, select=chosen), runs, out_dir))
