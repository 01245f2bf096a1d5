"""The figures' toolkit: style, colours, panel grids, legends, bars, and writing a PNG with its data.

Figures use :class:`matplotlib.figure.Figure` directly (no global backend switch, nothing left open), one colour
per precision across all figures (Okabe-Ito, colour-blind safe). The figures themselves are in ``figures/``.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import labels
from .labels import is_missing

if TYPE_CHECKING:
    from matplotlib.typing import LegendLocType

logger = logging.getLogger(__name__)

STYLE: dict[str, Any] = {
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
}
DPI = 150
KAMRADT_CMAP = LinearSegmentedColormap.from_list("kamradt", ["#F0496E", "#EBB839", "#0CD79F"])
"""Red-yellow-green, the colours of Kamradt's needle-in-a-haystack plots."""
FAMILY_COLORS = {"pruning": "#0072B2", "quantization": "#D55E00", "quantized pruning": "#009E73"}
QUANT_COLORS = {
    "flexgen": "#56B4E9",
    "flexgen_outlier": "#0072B2",
    "kivi": "#E69F00",
    "kivi_outlier": "#D55E00",
    "kvquant": "#CC79A7",
    "hqq": "#999999",
}
FULL_PRECISION_COLOR = "#9E9E9E"
SCORE_LABEL = "Score (0–100)"


@dataclass
class FigureResult:
    """A written figure.

    Attributes:
        name: file stem (``fig2_budget``); the PNG is ``NAME.png`` and its data ``NAME.csv``.
        title: one line.
        caption: what is plotted, from which runs.
        path: the PNG.
        data: the plotted points: configuration, value, ``samples``, ``run_path``.
        panels: number of panels.
        notes: anything left out, and why.
        extra_files: other files written with the figure, by kind (Figure 2: its points as Markdown, the
            ordering check).
        details: Markdown lines that the index shows under the figure (Figure 2: the ordering check).
    """

    name: str
    title: str
    caption: str
    path: Path
    data: pd.DataFrame
    panels: int
    notes: list[str] = field(default_factory=list)
    extra_files: dict[str, Path] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    @property
    def data_path(self) -> Path:
        return self.path.with_suffix(".csv")


# ----------------------------------------------------------------------------------------------- helpers
def panel_grid(
    n: int, ncols: int = 3, panel: tuple[float, float] = (4.6, 3.4), top: float = 1.0, right: float = 0.0
) -> tuple[Figure, list]:
    """A constrained-layout figure with ``n`` panels in at most ``ncols`` columns (unused axes removed), ``top``
    inches above them (the title) and ``right`` beside them (a legend or a colour bar)."""
    ncols = max(1, min(n, ncols))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel[0] * ncols + right, panel[1] * nrows + top), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]


def figure_title(fig: Figure, text: str) -> None:
    """A bold figure title, wrapped to the figure's width (13 pt bold: about 8 characters per inch)."""
    width = max(20, int(fig.get_figwidth() * 8))
    fig.suptitle(textwrap.fill(text, width=width), fontweight="bold")


def figure_legend(
    fig: Figure, handles: Sequence[Any], loc: LegendLocType = "outside lower center", ncols: int | None = None
) -> None:
    """A figure legend below the panels, in ``ncols`` columns or as many as fit the figure's width."""
    if ncols is None:
        longest = max((len(h.get_label()) for h in handles), default=10)
        per_entry = 0.085 * longest + 0.75  # inches at 10 pt, with the handle and the gap
        ncols = max(1, min(len(handles), int(fig.get_figwidth() // per_entry)))
    fig.legend(handles=list(handles), loc=loc, ncols=ncols, frameon=False)


def save_figure(fig: Figure, out_dir: Path, name: str, data: pd.DataFrame) -> Path:
    """Write ``NAME.png`` and the plotted points ``NAME.csv`` into ``out_dir``; returns the PNG's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=DPI)
    data.to_csv(path.with_suffix(".csv"), index=False, na_rep="")
    logger.info("wrote %s", path)
    return path


def setting_handles(bits: Sequence[int], marker: bool = True) -> list[Line2D]:
    """Legend lines for token-precision settings (one per bit width, 16-bit first)."""
    return [
        Line2D(
            [],
            [],
            color=labels.SETTING_COLORS.get(int(b), "#333333"),
            marker=labels.SETTING_MARKERS.get(int(b), "o") if marker else None,
            linewidth=2,
            label=labels.setting_label(b, short=False),
        )
        for b in sorted(bits, reverse=True)
    ]


def setting_patches(bits: Sequence[int]) -> list[Patch]:
    """Legend patches for token-precision settings (one per bit width, 16-bit first)."""
    return [
        Patch(color=labels.SETTING_COLORS.get(int(b), "#333333"), label=labels.setting_label(b, short=False))
        for b in sorted(bits, reverse=True)
    ]


def plotted_points(picked: pd.DataFrame, columns: Sequence[str], value: str = "score") -> pd.DataFrame:
    """The plotted points of a figure: configuration columns, value, samples and provenance."""
    keep = [c for c in columns if c in picked.columns]
    out = picked[keep].copy()
    out["value"] = picked[value].astype(float) if value in picked else np.nan
    out["samples"] = picked["samples"]
    out["n_runs"] = picked["n_runs"]
    out["run_path"] = picked["run_path"]
    return out.reset_index(drop=True)


def bar_group(
    ax: Any,
    x: float,
    values: list[tuple[str, float, str]],
    width: float,
    annotate: bool = False,
    digits: int = 1,
) -> None:
    """Bars side by side centred on ``x``: ``values`` are (label, value, colour); a missing value leaves a gap."""
    n = len(values)
    for i, (_label, value, color) in enumerate(values):
        if is_missing(value):
            continue
        pos = x + (i - (n - 1) / 2) * width
        ax.bar(pos, value, width=width * 0.92, color=color, edgecolor="white", linewidth=0.5)
        if annotate:
            ax.annotate(
                f"{value:.{digits}f}",
                (pos, value),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )


def bars_per_setting(
    ax: Any, points: pd.DataFrame, x_key: str, x_values: Sequence[Any], value: str, annotate: bool = False
) -> list[int]:
    """One group of bars per ``x_values`` (values of ``points[x_key]``), one bar per bit width, 16-bit first.

    Each bar is ``points[value]`` of the first row with that x value and bit width, in the setting's colour; a
    combination without a row is a gap. Returns the bit widths drawn (for the legend).
    """
    bits_list = sorted(points["bits"].unique(), reverse=True)
    width = 0.8 / len(bits_list)
    for i, x in enumerate(x_values):
        bars = []
        for bits in bits_list:
            v = points[(points[x_key] == x) & (points["bits"] == bits)][value]
            bars.append(
                ("", float(v.iloc[0]) if len(v) else math.nan, labels.SETTING_COLORS.get(int(bits), "#333"))
            )
        bar_group(ax, i, bars, width, annotate=annotate)
    return [int(b) for b in bits_list]
