"""Figure 1: cross-entropy (nats) against the memory kept (measured ``kv_bytes / kv_bytes_full``).

One line per method family: pruning only (16-bit, varying tokens), quantization only (no pruning, varying bits),
quantized pruning (one line per precision); the uncompressed cache as a dashed reference. Panels per
(model, benchmark, length).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.lines import Line2D

from .. import labels
from ..labels import is_missing
from ..paper import PaperNumbers
from ..plotting import FAMILY_COLORS, FigureResult
from ..selection import key_tuples, match_key, one_precision, pick_runs, sorted_unique
from .spec import FigureSpec, Layout, Panel, Selection, first, render

PANEL_KEYS = ["model", "benchmark", "benchmark_length"]


def _method(pruner: str, bits: float) -> str:
    if pruner == "none":
        return "full" if bits == 16 else "quantization"
    return "pruning" if bits == 16 else "quantized pruning"


def select(runs: pd.DataFrame, paper: PaperNumbers | None = None) -> Selection | None:
    """Cross-entropy runs with a measured compression, no layer configuration; panels with a compressed run."""
    c = runs[
        (runs["family"] == "crossentropy")
        & runs["compression"].notna()
        & runs["score"].notna()
        & one_precision(runs)
    ]
    if c.empty:
        return None
    c = c.copy()
    c["pruner"] = c["pruner"].fillna("none")
    c["method"] = [_method(p, b) for p, b in zip(c["pruner"], c["bits"])]
    picked = pick_runs(c, [*PANEL_KEYS, "pruner", "bits", "tokens", "budget", "quant", "group_size"])
    panels = sorted_unique(key_tuples(picked, PANEL_KEYS), PANEL_KEYS)
    panels = [p for p in panels if (match_key(picked, PANEL_KEYS, p)["method"] != "full").any()]
    return Selection(picked, PANEL_KEYS, panels) if panels else None


def _series(d: pd.DataFrame) -> list[tuple[str, pd.DataFrame, dict[str, Any]]]:
    """The lines of one panel: (label, points, style)."""
    pruners = sorted({p for p in d["pruner"] if p != "none"}, key=lambda v: labels.sort_value("pruner", v))
    markers = dict(zip(pruners, ("o", "s", "^", "D", "v", "P")))
    series: list[tuple[str, pd.DataFrame, dict[str, Any]]] = []
    q = d[d["method"] == "quantization"]
    if len(q):
        series.append(
            ("Quantization only", q, dict(color=FAMILY_COLORS["quantization"], marker="X", linestyle="-"))
        )
    for pruner in pruners:
        name = labels.pruner_label(pruner)
        p = d[(d["method"] == "pruning") & (d["pruner"] == pruner)]
        if len(p):
            style = dict(color=FAMILY_COLORS["pruning"], marker=markers[pruner], linestyle="-")
            series.append((f"Pruning only: {name}, 16-bit", p, style))
        for bits, line in ((8, ":"), (4, "-"), (3, "-."), (2, "--")):
            qp = d[(d["method"] == "quantized pruning") & (d["pruner"] == pruner) & (d["bits"] == bits)]
            if len(qp):
                style = dict(
                    color=FAMILY_COLORS["quantized pruning"],
                    marker=markers[pruner],
                    linestyle=line,
                    alpha=1.0 if bits == 4 else 0.8,
                )
                series.append((f"Quantized pruning: {name}, {bits}-bit", qp, style))
    return series


def draw_panel(panel: Panel) -> None:
    ax, d, handles = panel.ax, panel.rows, panel.drawn.handles
    full = d[d["method"] == "full"]
    if len(full):
        ax.axhline(full["score"].iloc[0], color="#444444", linestyle="--", linewidth=1.2)
        handles.setdefault("full", Line2D([], [], color="#444444", linestyle="--", label="Full 16-bit cache"))
    for name, points, style in _series(d):
        points = points.sort_values("compression")
        (line,) = ax.plot(
            points["compression"], points["score"], linewidth=1.8, markersize=6, label=name, **style
        )
        handles.setdefault(name, line)
    ax.set_xscale("log", base=2)
    ax.invert_xaxis()
    ticks = [2.0**-k for k in range(0, 9)]
    lo, hi = d["compression"].min(), d["compression"].max()
    shown = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5] or ticks[:2]
    ax.set_xticks(shown, [labels.budget_label(t) for t in shown])
    ax.minorticks_off()
    ax.set_xlabel(
        "KV memory kept (fraction of the full 16-bit cache)\n← less compression · more compression →"
    )
    ax.set_ylabel("Cross-entropy (nats/token)")
    model, bench, length = panel.key
    ax.set_title(
        f"{labels.model_label(model)} · {labels.benchmark_label(bench)}"
        + (f" · {labels.length_label(length)} tokens" if not is_missing(length) else "")
    )


SPEC = FigureSpec(
    name="fig1_crossentropy",
    title="Figure 1: cross-entropy against compression",
    heading="Figure 1: cross-entropy against KV cache compression",
    caption=(
        "Mean token cross-entropy (nats, lower is better) of the `crossentropy` benchmark against the "
        "measured KV memory kept (compressed bytes / full 16-bit bytes, log scale, compression grows to "
        "the right). Pruning only: 16-bit, varying tokens; quantization only: no pruning, varying bits; "
        "quantized pruning: pruned tokens stored in fewer bits."
    ),
    select=select,
    draw_panel=draw_panel,
    layout=Layout(ncols=2, panel=(5.6, 4.2), top=0.6, right=3.6),
    legend=lambda selection, drawn: list(drawn.handles.values()),
    legend_loc="outside right center",
    legend_ncols=1,
    columns=[*PANEL_KEYS, "method", "pruner", "bits", "tokens", "compression"],
)


def figure1_crossentropy(runs: pd.DataFrame, out_dir: str | Path) -> FigureResult | None:
    """Figure 1 (:data:`SPEC`): cross-entropy against the KV memory kept, per (model, benchmark, length)."""
    return first(render(SPEC, runs, out_dir))
