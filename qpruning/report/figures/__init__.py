"""The paper's figures from collected runs, as PNG files (matplotlib, Agg, no pyplot state): one module each.

Each module declares its figure as a :class:`spec.FigureSpec` (what it selects, its panels, how one panel draws,
its legend, title and caption), drawn by :func:`spec.render`, and keeps the function the report calls: it takes
the kept complete runs (``Collection.runs``) and an output folder, and returns a :class:`FigureResult` (or a list
of them, for the NIAH heatmaps), or ``None`` when no run fits: a figure with no data is never drawn. Every figure
also writes the points it plots, with the samples and the run folder behind each, as ``NAME.csv`` next to the
PNG. Which runs fit: ``selection.py``; style, colours, grids, bars and legends: ``plotting.py``. Budgets are
shown as fractions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..paper import PaperNumbers
from ..plotting import FigureResult
from .fig1_crossentropy import figure1_crossentropy
from .fig2_budget import FIGURE2_BITS, figure2_budget, with_intervals
from .fig3_lengths import figure3_lengths
from .fig4_scale import figure4_scale
from .fig9_layers import LAYER_CONFIG, figure9_layers
from .fig10_quant import figure10_quant
from .niah import niah_heatmaps
from .spec import Drawn, FigureSpec, Layout, Panel, Selection, render

__all__ = [
    "FIGURE2_BITS",
    "LAYER_CONFIG",
    "Drawn",
    "FigureResult",
    "FigureSpec",
    "Layout",
    "Panel",
    "Selection",
    "build_figures",
    "figure1_crossentropy",
    "figure2_budget",
    "figure3_lengths",
    "figure4_scale",
    "figure9_layers",
    "figure10_quant",
    "niah_heatmaps",
    "render",
    "with_intervals",
]


def build_figures(
    runs: pd.DataFrame, out_dir: str | Path, paper: PaperNumbers | None = None
) -> dict[str, Any]:
    """All figures by name: a :class:`FigureResult`, None (no runs), or a list (``niah`` heatmaps)."""
    out_dir = Path(out_dir)
    return {
        "fig1": figure1_crossentropy(runs, out_dir),
        "fig2": figure2_budget(runs, out_dir, paper),
        "fig3": figure3_lengths(runs, out_dir),
        "fig4": figure4_scale(runs, out_dir),
        "fig9": figure9_layers(runs, out_dir),
        "fig10": figure10_quant(runs, out_dir),
        "niah": niah_heatmaps(runs, out_dir),
    }
