"""A figure as a declaration (:class:`FigureSpec`), and the one function that draws it (:func:`render`).

A spec says what the figure selects (``select``: runs -> :class:`Selection`, its points and panels), how one
panel draws (``draw_panel``: a :class:`Panel`), its legend, title and caption, and which points it writes. The
skeleton is here once: the panel grid in the figure's style, one ``draw_panel`` per panel, the legend, the title,
``NAME.png`` with its points ``NAME.csv`` (:func:`plotting.save_figure`), and the :class:`FigureResult`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from ..paper import PaperNumbers
from ..plotting import (
    STYLE,
    FigureResult,
    figure_legend,
    figure_title,
    panel_grid,
    plotted_points,
    save_figure,
)
from ..selection import match_key, rows_in

if TYPE_CHECKING:
    from matplotlib.typing import LegendLocType


@dataclass
class Selection:
    """What one PNG draws.

    Attributes:
        points: the rows behind the panels (runs, or points built from them).
        panel_keys: the columns of ``points`` that name a panel.
        panels: the panels, in the order drawn (values of ``panel_keys``).
        notes: anything left out, and why (shown in the index).
        context: whatever the panels, the legend or the texts need beyond ``points`` (the paper's numbers...).
        count: the panels reported, where not ``len(panels)`` (the NIAH heatmaps count runs, not grid cells).
    """

    points: pd.DataFrame
    panel_keys: list[str]
    panels: list[tuple]
    notes: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    count: int | None = None


@dataclass
class Drawn:
    """What the panels drew, for the legend and the caption.

    Attributes:
        bits: bit widths drawn; quants: quantizers drawn.
        handles: legend entries by label, first drawn first.
        marks: things drawn somewhere (``"paper"``: the paper's cells; ``"full"``: a 16-bit reference...).
        image: the last image drawn (a colour bar's mappable).
    """

    bits: set[int] = field(default_factory=set)
    quants: set[str] = field(default_factory=set)
    handles: dict[str, Any] = field(default_factory=dict)
    marks: set[str] = field(default_factory=set)
    image: Any = None


@dataclass
class Panel:
    """One panel to draw: its axes, its key, its rows of ``selection.points``, and the figure's :class:`Drawn`."""

    ax: Any
    key: tuple
    rows: pd.DataFrame
    selection: Selection
    drawn: Drawn

    @property
    def keyed(self) -> dict[str, Any]:
        """The panel's key by column name."""
        return dict(zip(self.selection.panel_keys, self.key))


@dataclass(frozen=True)
class Layout:
    """The panel grid: columns (or a function of the selection), inches per panel, room above (title) and to the
    right (a legend beside the panels), and rc settings on top of :data:`plotting.STYLE`."""

    ncols: int | Callable[[Selection], int] = 2
    panel: tuple[float, float] = (5.0, 3.6)
    top: float = 1.2
    right: float = 0.0
    rc: Mapping[str, Any] = field(default_factory=dict)


Text: TypeAlias = "str | Callable[[Selection, Drawn], str]"
"""A text of the figure: fixed, or written from the selection and what was drawn."""


@dataclass(frozen=True)
class FigureSpec:
    """A figure, declared.

    Attributes:
        name: file stem (``fig2_budget``).
        title: the one-line title of the result (the index's heading).
        heading: the title on the PNG.
        caption: what is plotted, from which runs.
        select: runs and the paper's numbers -> one :class:`Selection` per PNG (or one, or None: nothing to draw).
        draw_panel: draws one :class:`Panel`.
        layout: the panel grid.
        legend: the legend's handles, from the selection and what was drawn (None: no legend).
        legend_loc: where the legend goes; ``legend_ncols``: its columns (None: as many as fit the width).
        finish: anything drawn on the figure after the panels (colour bars, axis labels), before the title.
        columns: the columns of the written points (:func:`plotting.plotted_points` of the drawn panels' rows).
        data: the written points, where not ``columns`` of the drawn panels' rows.
        extra: files written beside the figure: (selection, points, folder) -> (files by kind, index lines).
    """

    name: Text
    title: Text
    heading: Text
    caption: Text
    select: Callable[[pd.DataFrame, PaperNumbers | None], Selection | Sequence[Selection] | None]
    draw_panel: Callable[[Panel], None]
    layout: Layout = Layout()
    legend: Callable[[Selection, Drawn], Sequence[Any]] | None = None
    legend_loc: LegendLocType = "outside lower center"
    legend_ncols: int | None = None
    finish: Callable[[Figure, list[Any], Selection, Drawn], None] | None = None
    columns: Sequence[str] = ()
    data: Callable[[Selection], pd.DataFrame] | None = None
    extra: Callable[[Selection, pd.DataFrame, Path], tuple[dict[str, Path], list[str]]] | None = None


def _text(text: Text, selection: Selection, drawn: Drawn) -> str:
    return text if isinstance(text, str) else text(selection, drawn)


def _points(spec: FigureSpec, selection: Selection) -> pd.DataFrame:
    if spec.data is not None:
        return spec.data(selection)
    drawn_rows = rows_in(selection.points, selection.panels, selection.panel_keys)
    return plotted_points(drawn_rows, list(dict.fromkeys(spec.columns)))


def render(
    spec: FigureSpec, runs: pd.DataFrame, out_dir: str | Path, paper: PaperNumbers | None = None
) -> list[FigureResult]:
    """Draw ``spec`` from ``runs``: one PNG (and its points) per selection; none when nothing fits."""
    chosen = spec.select(runs, paper) if len(runs) else None
    selections = [chosen] if isinstance(chosen, Selection) else list(chosen or [])
    out = Path(out_dir)
    return [_render_one(spec, selection, out) for selection in selections]


def _render_one(spec: FigureSpec, selection: Selection, out_dir: Path) -> FigureResult:
    layout, drawn = spec.layout, Drawn()
    name = _text(spec.name, selection, drawn)
    ncols = layout.ncols if isinstance(layout.ncols, int) else layout.ncols(selection)
    panels, keys = selection.panels, selection.panel_keys
    rc: dict[str, Any] = {**STYLE, **layout.rc}
    # the stubs key rc by a Literal of rcParams names; matplotlib checks these names when the context opens
    with matplotlib.rc_context(rc):  # type: ignore[arg-type]
        fig, axes = panel_grid(
            len(panels), ncols=ncols, panel=layout.panel, top=layout.top, right=layout.right
        )
        for ax, key in zip(axes, panels):
            spec.draw_panel(Panel(ax, key, match_key(selection.points, keys, key), selection, drawn))
        if spec.finish is not None:
            spec.finish(fig, axes, selection, drawn)
        if spec.legend is not None:
            figure_legend(fig, spec.legend(selection, drawn), loc=spec.legend_loc, ncols=spec.legend_ncols)
        figure_title(fig, _text(spec.heading, selection, drawn))
        data = _points(spec, selection)
        path = save_figure(fig, out_dir, name, data)
    files, details = spec.extra(selection, data, out_dir) if spec.extra is not None else ({}, [])
    return FigureResult(
        name=name,
        title=_text(spec.title, selection, drawn),
        caption=_text(spec.caption, selection, drawn),
        path=path,
        data=data,
        panels=len(panels) if selection.count is None else selection.count,
        notes=selection.notes,
        extra_files=files,
        details=details,
    )


def first(results: list[FigureResult]) -> FigureResult | None:
    """The figure of a one-PNG spec, None when nothing was drawn."""
    return results[0] if results else None
