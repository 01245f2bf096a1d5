"""The paper's figures from collected runs, as PNG files (matplotlib, Agg, no pyplot state): one function each.

Each function takes the kept complete runs (``Collection.runs``) and an output folder, and returns a
:class:`FigureResult` (or a list of them, for the NIAH heatmaps), or ``None`` when no run fits: a figure with no
data is never drawn. Every figure also writes the points it plots, with the samples and the run folder behind
each, as ``NAME.csv`` next to the PNG. Which runs fit: ``selection.py``; style, colours, grids, bars and
legends: ``plotting.py``. Budgets are shown as fractions.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import labels
from .collect import read_predictions
from .labels import is_missing
from .ordering import precision_ordering
from .paper import PaperNumbers, paper_budget_points
from .plotting import (
    FAMILY_COLORS,
    FULL_PRECISION_COLOR,
    KAMRADT_CMAP,
    QUANT_COLORS,
    SCORE_LABEL,
    STYLE,
    FigureResult,
    bar_group,
    bars_per_setting,
    figure_legend,
    figure_title,
    panel_grid,
    plotted_points,
    save_figure,
    setting_handles,
    setting_patches,
)
from .render import frame_markdown
from .selection import (
    budget_runs,
    key_tuples,
    match_key,
    paper_quantizer_or_16bit,
    pick_runs,
    rows_in,
    sorted_unique,
    without_layer_config,
)
from .uncertainty import RESAMPLES, SEED, run_interval

logger = logging.getLogger(__name__)

FIGURE2_BITS: tuple[int, ...] = (16, 8, 4)
"""Figure 2's settings: 1x16, 2x8, 4x4 (equal memory at each budget); other bit widths are not drawn."""
LAYER_CONFIG = re.compile(r"^(\d+)bit@(\d+)-(\d+)$")


# ----------------------------------------------------------------------------------------------- Figure 1
def figure1_crossentropy(runs: pd.DataFrame, out_dir: str | Path) -> FigureResult | None:
    """Figure 1: cross-entropy (nats) against the memory kept (measured ``kv_bytes / kv_bytes_full``).

    One line per method family: pruning only (16-bit, varying tokens), quantization only (no pruning, varying
    bits), quantized pruning (one line per precision); the uncompressed cache as a dashed reference.
    Panels per (model, benchmark, length).
    """
    if not len(runs):
        return None
    c = runs[
        (runs["family"] == "crossentropy")
        & runs["compression"].notna()
        & runs["score"].notna()
        & without_layer_config(runs)
    ]
    if c.empty:
        return None
    c = c.copy()
    c["pruner"] = c["pruner"].fillna("none")
    c["method"] = [
        "full"
        if p == "none" and b == 16
        else "quantization"
        if p == "none"
        else "pruning"
        if b == 16
        else "quantized pruning"
        for p, b in zip(c["pruner"], c["bits"])
    ]
    panel_keys = ["model", "benchmark", "benchmark_length"]
    picked = pick_runs(c, [*panel_keys, "pruner", "bits", "tokens", "budget", "quant", "group_size"])
    panels = sorted_unique(key_tuples(picked, panel_keys), panel_keys)
    panels = [p for p in panels if (match_key(picked, panel_keys, p)["method"] != "full").any()]
    if not panels:
        return None
    out_dir = Path(out_dir)
    with matplotlib.rc_context(STYLE):
        fig, axes = panel_grid(len(panels), ncols=2, panel=(5.6, 4.2), top=0.6)
        fig.set_figwidth(fig.get_figwidth() + 3.6)
        handles: dict[str, Line2D] = {}
        for ax, panel in zip(axes, panels):
            d = match_key(picked, panel_keys, panel)
            full = d[d["method"] == "full"]
            if len(full):
                ax.axhline(full["score"].iloc[0], color="#444444", linestyle="--", linewidth=1.2)
                handles.setdefault(
                    "full", Line2D([], [], color="#444444", linestyle="--", label="Full 16-bit cache")
                )
            pruners = sorted(
                {p for p in d["pruner"] if p != "none"}, key=lambda v: labels.sort_value("pruner", v)
            )
            markers = dict(zip(pruners, ("o", "s", "^", "D", "v", "P")))
            series: list[tuple[str, pd.DataFrame, dict[str, Any]]] = []
            q = d[d["method"] == "quantization"]
            if len(q):
                series.append(
                    (
                        "Quantization only",
                        q,
                        dict(color=FAMILY_COLORS["quantization"], marker="X", linestyle="-"),
                    )
                )
            for pruner in pruners:
                p = d[(d["method"] == "pruning") & (d["pruner"] == pruner)]
                if len(p):
                    series.append(
                        (
                            f"Pruning only: {labels.pruner_label(pruner)}, 16-bit",
                            p,
                            dict(color=FAMILY_COLORS["pruning"], marker=markers[pruner], linestyle="-"),
                        )
                    )
                for bits, style in ((8, ":"), (4, "-"), (3, "-."), (2, "--")):
                    qp = d[
                        (d["method"] == "quantized pruning") & (d["pruner"] == pruner) & (d["bits"] == bits)
                    ]
                    if len(qp):
                        series.append(
                            (
                                f"Quantized pruning: {labels.pruner_label(pruner)}, {bits}-bit",
                                qp,
                                dict(
                                    color=FAMILY_COLORS["quantized pruning"],
                                    marker=markers[pruner],
                                    linestyle=style,
                                    alpha=1.0 if bits == 4 else 0.8,
                                ),
                            )
                        )
            for name, points, style in series:
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
            model, bench, length = panel
            ax.set_title(
                f"{labels.model_label(model)} · {labels.benchmark_label(bench)}"
                + (f" · {labels.length_label(length)} tokens" if not is_missing(length) else "")
            )
        fig.legend(handles=list(handles.values()), loc="outside right center", frameon=False)
        figure_title(fig, "Figure 1: cross-entropy against KV cache compression")
        data = plotted_points(
            rows_in(picked, panels, panel_keys),
            [*panel_keys, "method", "pruner", "bits", "tokens", "compression"],
        )
        path = save_figure(fig, out_dir, "fig1_crossentropy", data)
    return FigureResult(
        name="fig1_crossentropy",
        title="Figure 1: cross-entropy against compression",
        caption=(
            "Mean token cross-entropy (nats, lower is better) of the `crossentropy` benchmark against the "
            "measured KV memory kept (compressed bytes / full 16-bit bytes, log scale, compression grows to "
            "the right). Pruning only: 16-bit, varying tokens; quantization only: no pruning, varying bits; "
            "quantized pruning: pruned tokens stored in fewer bits."
        ),
        path=path,
        data=data,
        panels=len(panels),
    )


# ----------------------------------------------------------------------------------------------- Figure 2
def figure2_budget(
    runs: pd.DataFrame, out_dir: str | Path, paper: PaperNumbers | None = None
) -> FigureResult | None:
    """Figure 2: score against memory budget, one line per token-precision setting (1x16, 2x8, 4x4).

    Runs: ``budget`` given, a pruner, the paper's quantizer, no layer-wise configuration. Panels per
    (model, pruner, benchmark[, length]); panels with a single budget are left out when others sweep budgets.
    Where the paper's Table 1 has the same model, benchmark and pruner, its cells are drawn as hollow markers at
    their budget (Llama-3: tokens x bits / 16 / 8k). Any benchmark but cross-entropy fits (``niah``,
    ``ruler_small``, a custom name). When runs of both compat modes exist, each mode gets its own panels (titled
    with the mode).

    Each point carries a 95% percentile bootstrap interval over the run's per-sample scores
    (:mod:`uncertainty`: seeded, resampled within tasks), drawn as an error bar and written with the points
    (``ci_low``, ``ci_high``, ``n``) to ``fig2_budget.csv`` and ``fig2_budget.md``. The check
    ``4x4 >= 2x8 >= 1x16 at budgets <= 1/16`` (:mod:`ordering`) is written beside them as ``fig2_ordering.csv``
    (per budget) and ``fig2_ordering.md`` (per panel: holds, or the budgets where it fails).
    """
    c = budget_runs(runs)
    if not len(c):
        return None
    c = c[(c["family"] != "crossentropy") & c["score"].notna() & c["bits"].isin(FIGURE2_BITS)]
    if c.empty:
        return None
    modes = sorted({str(m) for m in c["compat"].dropna()})
    panel_keys = ["model", "pruner", "benchmark", "benchmark_length"] + (["compat"] if len(modes) > 1 else [])
    picked = with_intervals(pick_runs(c, [*panel_keys, "budget", "bits"]))
    panels = sorted_unique(key_tuples(picked, panel_keys), panel_keys)
    n_budgets = {p: match_key(picked, panel_keys, p)["budget"].nunique() for p in panels}
    notes = []
    if any(n > 1 for n in n_budgets.values()):
        single = [p for p in panels if n_budgets[p] == 1]
        if single:
            notes.append(
                "Left out (a single budget, nothing to sweep): "
                + "; ".join(_fig2_panel_name(dict(zip(panel_keys, p))) for p in single)
            )
        panels = [p for p in panels if n_budgets[p] > 1]
    out_dir = Path(out_dir)
    all_bits: set[int] = set()
    paper_drawn = False
    with matplotlib.rc_context(STYLE):
        fig, axes = panel_grid(len(panels), ncols=3 if len(panels) != 4 else 2, panel=(4.8, 3.6), top=1.3)
        for ax, panel in zip(axes, panels):
            d = match_key(picked, panel_keys, panel)
            budgets = sorted(d["budget"].unique())
            panel_bits = sorted(d["bits"].unique(), reverse=True)
            for i, bits in enumerate(panel_bits):
                points = d[d["bits"] == bits].sort_values("budget")
                all_bits.add(int(bits))
                shift = 0.06 * (i - (len(panel_bits) - 1) / 2)  # error bars side by side, not on top
                ax.errorbar(
                    np.log2(points["budget"]) + shift,
                    points["score"],
                    yerr=_error_bars(points),
                    color=labels.SETTING_COLORS.get(int(bits)),
                    marker=labels.SETTING_MARKERS.get(int(bits), "o"),
                    linewidth=2,
                    markersize=6.5,
                    elinewidth=1.1,
                    capsize=3,
                )
            model, pruner, bench, length = panel[:4]
            drawn_budgets: set[float] = set()
            family = labels.benchmark_family(bench)
            if paper and not labels.is_reduced(bench) and family in ("longbench", "niah"):
                ref = paper_budget_points(paper, model, family, pruner)
                ref = ref[
                    ref["bits"].isin(d["bits"].unique())
                    & (ref["budget"] >= min(budgets) / 1.01)
                    & (ref["budget"] <= max(budgets) * 1.01)
                ]
                for bits in sorted(ref["bits"].unique(), reverse=True):
                    r = ref[ref["bits"] == bits]
                    ax.scatter(
                        np.log2(r["budget"]),
                        r["value"],
                        s=70,
                        facecolors="none",
                        linewidths=1.6,
                        edgecolors=labels.SETTING_COLORS.get(int(bits)),
                        marker=labels.SETTING_MARKERS.get(int(bits), "o"),
                        zorder=3,
                    )
                    paper_drawn = True
                    drawn_budgets.update(float(b) for b in r["budget"])
            if len(budgets) == 1:  # nothing to connect: write the values next to the markers
                for _, point in d.iterrows():
                    ax.annotate(
                        f"{point['score']:.1f}",
                        (np.log2(point["budget"]), point["score"]),
                        xytext=(8, 0),
                        textcoords="offset points",
                        va="center",
                        fontsize=9,
                        color=labels.SETTING_COLORS.get(int(point["bits"]), "#333"),
                    )
            ticks = sorted(set(budgets) | drawn_budgets)
            ax.set_xticks(np.log2(ticks), [labels.budget_label(b) for b in ticks])
            if len(budgets) == 1:
                ax.set_xlim(np.log2(budgets[0]) - 1, np.log2(budgets[0]) + 1)
            ax.minorticks_off()
            ax.set_xlabel("KV cache budget (fraction of full cache)")
            ax.set_ylabel(SCORE_LABEL)
            ax.set_title(_fig2_panel_name(dict(zip(panel_keys, panel)), separator="\n", mode=len(modes) > 1))
        handles: list[Any] = setting_handles(sorted(all_bits))
        if paper_drawn:
            handles.append(
                Line2D(
                    [],
                    [],
                    color="#555555",
                    marker="o",
                    markerfacecolor="none",
                    linestyle="none",
                    markersize=8,
                    label="paper (Table 1, same setting)",
                )
            )
        figure_legend(fig, handles)
        figure_title(
            fig, "Figure 2: token-precision trade-off under varying memory budgets (equal memory per budget)"
        )
        data = plotted_points(
            rows_in(picked, panels, panel_keys),
            [
                *panel_keys,
                "compat",
                "budget",
                "bits",
                "setting",
                "tokens_nominal",
                "tokens_effective",
                "quant",
            ]
            + ["ci_low", "ci_high", "n"],
        )
        data = data.loc[:, ~data.columns.duplicated()]
        path = save_figure(fig, out_dir, "fig2_budget", data)
    extra_files, details = _write_fig2_tables(data, panel_keys, out_dir)
    return FigureResult(
        name="fig2_budget",
        title="Figure 2: score against memory budget",
        caption=(
            "Score against the KV cache budget (fraction of the full 16-bit cache, log scale) for 1x tokens at "
            "16-bit, 2x tokens at 8-bit and 4x tokens at 4-bit (equal memory at each budget). Quantizer: KIVI "
            "(FlexGen for Ada-KV / HeadKV), group size 64. Error bars: 95% percentile bootstrap intervals "
            f"({RESAMPLES} resamples of each run's samples within tasks, seed {SEED})."
            + (
                f" Compat modes {' and '.join(labels.label('compat', m) for m in modes)} in separate panels."
                if len(modes) > 1
                else ""
            )
            + (
                " Hollow markers: the paper's Table 1 cells at the same budget and precision."
                if paper_drawn
                else ""
            )
        ),
        path=path,
        data=data,
        panels=len(panels),
        notes=notes,
        extra_files=extra_files,
        details=details,
    )


def with_intervals(picked: pd.DataFrame) -> pd.DataFrame:
    """``picked`` with each run's bootstrap interval (:func:`uncertainty.run_interval`): ``ci_low``, ``ci_high``
    and ``n`` (samples behind it; 0 and NaN bounds when the run has no per-sample scores)."""
    intervals = [run_interval(d) for d in picked["run_dir"]] if len(picked) else []
    return picked.assign(
        ci_low=[i.low for i in intervals], ci_high=[i.high for i in intervals], n=[i.n for i in intervals]
    )


def _error_bars(points: pd.DataFrame) -> np.ndarray:
    """Error bar lengths below and above each score (0 where no interval, or where it excludes the score)."""
    below = (points["score"] - points["ci_low"]).clip(lower=0).fillna(0)
    above = (points["ci_high"] - points["score"]).clip(lower=0).fillna(0)
    return np.vstack([below.to_numpy(float), above.to_numpy(float)])


def _fig2_panel_name(panel: dict[str, Any], separator: str = " / ", mode: bool = True) -> str:
    """``SmolLM2-135M / SnapKV · NIAH / compat: paper's code`` (the mode only where panels differ by it)."""
    text = (
        f"{labels.model_label(panel['model'])}{separator}{labels.pruner_label(panel['pruner'])} · "
        f"{labels.benchmark_label(panel['benchmark'], panel['benchmark_length'])}"
    )
    if mode and "compat" in panel:
        text += f" · compat: {labels.label('compat', panel['compat'])}"
    return text


def _write_fig2_tables(
    data: pd.DataFrame, panel_keys: list[str], out_dir: Path
) -> tuple[dict[str, Path], list[str]]:
    """``fig2_budget.md`` (the points with their intervals) and the ordering check ``fig2_ordering.csv`` /
    ``.md``; returns the files by kind and the check's summary as Markdown lines for the index."""
    group_keys = [k for k in ["model", "benchmark", "benchmark_length", "pruner", "compat"] if k in data]
    shown = pd.DataFrame(
        {
            "model": [labels.model_label(m) for m in data["model"]],
            "benchmark": [
                labels.benchmark_label(b, n) for b, n in zip(data["benchmark"], data["benchmark_length"])
            ],
            "pruner": [labels.pruner_label(p) for p in data["pruner"]],
            "compat": [labels.label("compat", m) for m in data["compat"]],
            "budget": [labels.budget_label(b) for b in data["budget"]],
            "setting": data["setting"],
            "score": data["value"],
            "ci_low": data["ci_low"],
            "ci_high": data["ci_high"],
            "n": data["n"],
            "run": ["`" + str(p) + "`" for p in data["run_path"]],
        }
    )
    files = {"points md": out_dir / "fig2_budget.md"}
    files["points md"].write_text(
        "**Figure 2: the plotted points.** Score and its 95% percentile bootstrap interval "
        f"[ci_low, ci_high] over the run's n samples ({RESAMPLES} resamples within tasks, seed {SEED}).\n\n"
        + frame_markdown(shown, digits=2),
        encoding="utf-8",
    )
    check = precision_ordering(data, group_keys)
    files["ordering csv"] = out_dir / "fig2_ordering.csv"
    detail = check.detail.assign(budget_label=[labels.budget_label(b) for b in check.detail["budget"]])
    detail.to_csv(files["ordering csv"], index=False, na_rep="")
    summary = check.summary.copy()
    for key in group_keys:
        summary[key] = [
            labels.label(key, v) if key != "benchmark_length" else labels.length_label(v)
            for v in summary[key]
        ]
    summary = summary.drop(columns=["holds"]).rename(columns={"benchmark_length": "length"})
    details = [
        f"Check: **{check.claim}** (per panel; all three settings needed at a budget).",
        "",
        frame_markdown(summary),
    ]
    files["ordering md"] = out_dir / "fig2_ordering.md"
    files["ordering md"].write_text(
        f"**Figure 2 check: {check.claim}.** Per panel: the budgets checked, where the ordering fails, and where a "
        "reversal is clear (the bootstrap intervals of the two reversed settings do not overlap). Per budget: "
        f"{files['ordering csv'].name}.\n\n" + frame_markdown(summary),
        encoding="utf-8",
    )
    return files, details


# ----------------------------------------------------------------------------------------------- Figure 3
def figure3_lengths(runs: pd.DataFrame, out_dir: str | Path) -> FigureResult | None:
    """Figure 3: score per input-length bucket and setting: LongBench-E buckets and RULER 4k / 8k / 16k.

    Runs: ``budget`` given (paper: PyramidKV at 1/16), a pruner, the paper's quantizer. Panels per
    (model, pruner, budget) and source (LongBench-E, RULER); bars per setting.
    """
    c = budget_runs(runs)
    if not len(c):
        return None
    rows = []
    lbe = c[(c["family"] == "longbench_e")]
    for _, run in pick_runs(lbe, ["model", "pruner", "budget", "bits", "benchmark"]).iterrows():
        for bucket, value in (run["length_scores"] or {}).items():
            rows.append(
                {
                    **{k: run[k] for k in ("model", "pruner", "budget", "bits")},
                    "source": "LongBench-E",
                    "bucket": str(bucket),
                    "order": _bucket_order(str(bucket)),
                    "value": float(value),
                    "samples": run["samples"],
                    "n_runs": run["n_runs"],
                    "run_path": run["run_path"],
                }
            )
    ruler = c[(c["family"] == "ruler") & c["benchmark_length"].notna()]
    for _, run in pick_runs(ruler, ["model", "pruner", "budget", "bits", "benchmark_length"]).iterrows():
        rows.append(
            {
                **{k: run[k] for k in ("model", "pruner", "budget", "bits")},
                "source": "RULER",
                "bucket": labels.length_label(run["benchmark_length"]),
                "order": float(run["benchmark_length"]),
                "value": float(run["score"]),
                "samples": run["samples"],
                "n_runs": run["n_runs"],
                "run_path": run["run_path"],
            }
        )
    if not rows:
        return None
    data = pd.DataFrame(rows)
    panel_keys = ["model", "pruner", "budget", "source"]
    panels = sorted_unique(key_tuples(data, panel_keys), panel_keys)
    # a panel needs at least two buckets to say something about input length
    panels = [p for p in panels if match_key(data, panel_keys, p)["bucket"].nunique() > 1]
    if not panels:
        return None
    out_dir = Path(out_dir)
    all_bits: set[int] = set()
    with matplotlib.rc_context(STYLE):
        fig, axes = panel_grid(len(panels), ncols=2, panel=(5.0, 3.5), top=1.2)
        for ax, panel in zip(axes, panels):
            d = match_key(data, panel_keys, panel)
            buckets = d.sort_values("order")["bucket"].drop_duplicates().tolist()
            all_bits.update(bars_per_setting(ax, d, "bucket", buckets, "value"))
            ax.set_xticks(range(len(buckets)), buckets)
            model, pruner, budget, source = panel
            ax.set_xlabel("Input length (tokens)" if source == "RULER" else "Input length bucket (tokens)")
            ax.set_ylabel(SCORE_LABEL)
            ax.set_ylim(0, min(100, max(10.0, d["value"].max() * 1.15)))
            ax.grid(axis="x", visible=False)
            ax.set_title(
                f"{source} · {labels.model_label(model)}\n{labels.pruner_label(pruner)} · budget "
                f"{labels.budget_label(budget)}"
            )
        figure_legend(fig, setting_patches(sorted(all_bits)))
        figure_title(fig, "Figure 3: token-precision trade-off across input lengths")
        data = rows_in(data, panels, panel_keys).drop(columns=["order"]).reset_index(drop=True)
        path = save_figure(fig, out_dir, "fig3_lengths", data)
    return FigureResult(
        name="fig3_lengths",
        title="Figure 3: input-length buckets",
        caption=(
            "Score per input length at a fixed budget and setting: LongBench-E buckets (0-4k, 4-8k, 8k+ "
            "tokens, from `length_scores`) and RULER at 4k / 8k / 16k tokens."
        ),
        path=path,
        data=data,
        panels=len(panels),
    )


def _bucket_order(bucket: str) -> float:
    match = re.match(r"(\d+)", bucket)
    return float(match.group(1)) if match else math.inf


# ----------------------------------------------------------------------------------------------- Figure 4
def figure4_scale(
    runs: pd.DataFrame,
    out_dir: str | Path,
    budgets: Sequence[float] = (1 / 64, 1 / 16),
    pruners: Sequence[str] = ("pyramidkv",),
    model_prefix: str = "llama",
) -> FigureResult | None:
    """Figure 4 (and the paper's Figure 5 at 1/16): LongBench score per model size, bars per setting.

    Runs: LongBench, ``budget`` in ``budgets``, pruner in ``pruners``, models whose name starts with
    ``model_prefix`` (the Llama family). Panels per (variant: base / instruct, pruner, budget); a panel needs two
    models or more.
    """
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
    panel_keys = ["variant", "pruner", "budget", "benchmark"]
    picked = pick_runs(c, ["model", "pruner", "budget", "bits", "benchmark"])
    panels = sorted_unique(key_tuples(picked, panel_keys), panel_keys)
    panels = [p for p in panels if match_key(picked, panel_keys, p)["model"].nunique() > 1]
    if not panels:
        return None
    out_dir = Path(out_dir)
    all_bits: set[int] = set()
    with matplotlib.rc_context(STYLE):
        fig, axes = panel_grid(len(panels), ncols=2, panel=(5.6, 3.8), top=1.2)
        for ax, panel in zip(axes, panels):
            d = match_key(picked, panel_keys, panel)
            models = sorted(d["model"].unique(), key=lambda m: (labels.model_size(m), m))
            all_bits.update(bars_per_setting(ax, d, "model", models, "score", annotate=True))
            ax.set_xticks(
                range(len(models)),
                [
                    labels.model_label(m).replace("-Instruct", "\nInstruct").replace("-Base", "\nBase")
                    for m in models
                ],
            )
            ax.set_ylabel("LongBench score (0–100)")
            ax.set_ylim(0, min(100, d["score"].max() * 1.25))
            ax.grid(axis="x", visible=False)
            variant, pruner, budget, bench = panel
            ax.set_title(
                f"{variant.capitalize() if variant != 'other' else 'Models'} · "
                f"{labels.pruner_label(pruner)} · budget {labels.budget_label(budget)}"
                + (f" · {labels.benchmark_label(bench)}" if bench != "longbench" else "")
            )
        figure_legend(fig, setting_patches(sorted(all_bits)))
        figure_title(fig, "Figure 4: quantized pruning across model scales (Llama family)")
        data = plotted_points(
            rows_in(picked, panels, panel_keys),
            ["model", "variant", "pruner", "budget", "bits", "setting", "tokens_nominal"],
        )
        path = save_figure(fig, out_dir, "fig4_scale", data)
    return FigureResult(
        name="fig4_scale",
        title="Figure 4: model scale",
        caption=(
            "LongBench score per model (sorted by parameter count) for each token-precision setting; the paper "
            "shows 1/64 (Figure 4) and 1/16 (Figure 5), PyramidKV. Numbers above the bars are the scores."
        ),
        path=path,
        data=data,
        panels=len(panels),
    )


# ----------------------------------------------------------------------------------------------- Figure 9
def figure9_layers(runs: pd.DataFrame, out_dir: str | Path) -> FigureResult | None:
    """Figure 9: layer-wise token-precision configurations, relative change (%) to the 4x4 baseline.

    Runs with ``layer_config`` ``<bits>bit@<first>-<last>`` (those layers switched from 4x tokens at 4-bit to
    2x at 8-bit or 1x at 16-bit) against the baseline run with the same model, pruner, benchmark, length and
    budget (or tokens), no layer configuration and 4 bits. Panels per (model, pruner, budget) and benchmark.
    """
    if not len(runs):
        return None
    layered = runs[runs["layer_config"].notna() & runs["score"].notna()].copy()
    if layered.empty:
        return None
    parsed = [LAYER_CONFIG.match(str(v)) for v in layered["layer_config"]]
    layered = layered[[m is not None for m in parsed]].copy()
    if layered.empty:
        return None
    parsed = [m for m in parsed if m is not None]
    layered["layer_bits"] = [int(m.group(1)) for m in parsed]
    layered["first"] = [int(m.group(2)) for m in parsed]
    layered["last"] = [int(m.group(3)) for m in parsed]
    match_keys = ["model", "pruner", "benchmark", "benchmark_length", "budget", "tokens"]
    base_cands = runs[runs["layer_config"].isna() & (runs["bits"] == 4) & runs["score"].notna()]
    baselines = pick_runs(base_cands, match_keys) if len(base_cands) else base_cands
    rows, notes = [], []
    for _, run in layered.iterrows():
        key = tuple(None if is_missing(run[k]) else run[k] for k in match_keys)
        base = match_key(baselines, match_keys, key) if len(baselines) else baselines
        if base.empty:
            notes.append(f"no 4x4 baseline for {run['run_path']} ({run['layer_config']})")
            continue
        b = base.iloc[0]
        rows.append(
            {
                **{k: run[k] for k in match_keys},
                "layer_config": run["layer_config"],
                "layer_bits": run["layer_bits"],
                "first": run["first"],
                "last": run["last"],
                "score": float(run["score"]),
                "baseline": float(b["score"]),
                "value": 100.0 * (float(run["score"]) - float(b["score"])) / float(b["score"])
                if float(b["score"])
                else math.nan,
                "samples": run["samples"],
                "n_runs": run["n_runs"],
                "run_path": run["run_path"],
                "baseline_run": b["run_path"],
            }
        )
    if not rows:
        return None
    data = pd.DataFrame(rows)
    panel_keys = ["model", "pruner", "budget", "tokens", "benchmark", "benchmark_length"]
    panels = sorted_unique(key_tuples(data, panel_keys), panel_keys)
    out_dir = Path(out_dir)
    colors = {8: labels.SETTING_COLORS[8], 16: labels.SETTING_COLORS[16], 2: labels.SETTING_COLORS[2]}
    with matplotlib.rc_context(STYLE):
        fig, axes = panel_grid(len(panels), ncols=2, panel=(5.6, 3.6), top=1.2)
        for ax, panel in zip(axes, panels):
            d = match_key(data, panel_keys, panel)
            ranges = d.sort_values(["first", "last"])[["first", "last"]].drop_duplicates()
            series = sorted(d["layer_bits"].unique())
            width = 0.8 / len(series)
            for i, (first, last) in enumerate(ranges.itertuples(index=False)):
                values = []
                for bits in series:
                    v = d[(d["first"] == first) & (d["last"] == last) & (d["layer_bits"] == bits)]["value"]
                    values.append(
                        ("", float(v.iloc[0]) if len(v) else math.nan, colors.get(int(bits), "#333"))
                    )
                bar_group(ax, i, values, width)
            ax.axhline(0, color="#333333", linewidth=0.8)
            ax.set_xticks(range(len(ranges)), [f"{a}–{b}" for a, b in ranges.itertuples(index=False)])
            ax.set_xlabel("Modified layers")
            ax.set_ylabel("Change vs. 4x4 baseline (%)")
            ax.grid(axis="x", visible=False)
            model, pruner, budget, tokens, bench, length = panel
            where = (
                f"budget {labels.budget_label(budget)}" if not is_missing(budget) else f"{int(tokens)} tokens"
            )
            ax.set_title(
                f"{labels.benchmark_label(bench, length)} · {labels.model_label(model)}\n"
                f"{labels.pruner_label(pruner)} · {where} · baseline {d['baseline'].iloc[0]:.1f}"
            )
        bits_all = sorted(data["layer_bits"].unique())
        handles = [
            Patch(
                color=colors.get(int(b), "#333"), label=f"Modified layers at {labels.setting_label(b, False)}"
            )
            for b in bits_all
        ]
        figure_legend(fig, handles)
        figure_title(
            fig, "Figure 9: layer-wise token-precision, relative to 4x tokens at 4-bit in every layer"
        )
        path = save_figure(fig, out_dir, "fig9_layers", data)
    return FigureResult(
        name="fig9_layers",
        title="Figure 9: layer-wise configurations",
        caption=(
            "Relative change (%) of the score when the given layers keep 2x tokens at 8-bit or 1x tokens at "
            "16-bit instead of the baseline's 4x tokens at 4-bit (same memory), per benchmark."
        ),
        path=path,
        data=data,
        panels=len(panels),
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------- Figure 10
def figure10_quant(runs: pd.DataFrame, out_dir: str | Path) -> FigureResult | None:
    """Figure 10: quantization strategies (FlexGen, +outliers, KIVI, +outliers) per pruner and model.

    Runs: ``tokens`` given, quantized, group size 64, no layer configuration. Panels per
    (model, benchmark, tokens, bits), with the pruners that were run with two strategies or more (paper: 512
    tokens, 4-bit, LongBench, SnapKV and PyramidKV). The 16-bit run with the same tokens, when present, is drawn
    as a grey bar.
    """
    if not len(runs):
        return None
    c = runs[
        runs["tokens"].notna()
        & (runs["bits"] < 16)
        & (runs["group_size"] == labels.DEFAULT_GROUP_SIZE)
        & runs["quant"].notna()
        & runs["pruner"].notna()
        & (runs["pruner"] != "none")
        & without_layer_config(runs)
        & runs["score"].notna()
    ]
    if c.empty:
        return None
    panel_keys = ["model", "benchmark", "tokens", "bits"]
    picked = pick_runs(c, [*panel_keys, "pruner", "quant"])
    # An ablation compares strategies for the same pruner: keep the pruners run with two strategies or more
    # (Table 1's Ada-KV / HeadKV runs use FlexGen where the others use KIVI: that is not an ablation).
    strategies = picked.groupby([*panel_keys, "pruner"], dropna=False)["quant"].transform("nunique")
    picked = picked[strategies > 1]
    if picked.empty:
        return None
    panels = sorted_unique(key_tuples(picked, panel_keys), panel_keys)
    full = runs[(runs["bits"] == 16) & runs["tokens"].notna() & without_layer_config(runs)]
    out_dir = Path(out_dir)
    all_quants: set[str] = set()
    drew_full = False
    with matplotlib.rc_context(STYLE):
        fig, axes = panel_grid(len(panels), ncols=2, panel=(5.4, 3.8), top=1.2)
        for ax, panel in zip(axes, panels):
            d = match_key(picked, panel_keys, panel)
            pruners = sorted(d["pruner"].unique(), key=lambda v: labels.sort_value("pruner", v))
            quants = sorted(d["quant"].unique(), key=lambda v: labels.sort_value("quant", v))
            all_quants.update(quants)
            model, bench, tokens, _bits = panel
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
            width = 0.84 / (len(quants) + (1 if reference else 0))
            for i, pruner in enumerate(pruners):
                values = []
                if reference:
                    values.append(("16-bit", reference.get(pruner, math.nan), FULL_PRECISION_COLOR))
                    drew_full = True
                for quant in quants:
                    v = d[(d["pruner"] == pruner) & (d["quant"] == quant)]["score"]
                    values.append(
                        ("", float(v.iloc[0]) if len(v) else math.nan, QUANT_COLORS.get(quant, "#333"))
                    )
                bar_group(ax, i, values, width, annotate=True)
            ax.set_xticks(range(len(pruners)), [labels.pruner_label(p) for p in pruners])
            ax.set_ylabel(f"{labels.benchmark_label(panel[1])} score (0–100)")
            top = max([d["score"].max(), *reference.values()])
            ax.set_ylim(0, min(105, top * 1.2))
            ax.grid(axis="x", visible=False)
            model, bench, tokens, bits = panel
            ax.set_title(f"{labels.model_label(model)} · {int(tokens)} tokens, {int(bits)}-bit")
        handles: list[Any] = [
            Patch(color=QUANT_COLORS.get(q, "#333"), label=labels.quant_label(q))
            for q in sorted(all_quants, key=lambda v: labels.sort_value("quant", v))
        ]
        if drew_full:
            handles.insert(0, Patch(color=FULL_PRECISION_COLOR, label="16-bit (no quantization)"))
        figure_legend(fig, handles)
        figure_title(fig, "Figure 10: quantization strategies in quantized pruning")
        data = plotted_points(rows_in(picked, panels, panel_keys), [*panel_keys, "pruner", "quant"])
        path = save_figure(fig, out_dir, "fig10_quant", data)
    return FigureResult(
        name="fig10_quant",
        title="Figure 10: quantization strategies",
        caption=(
            "Score per pruner for each quantization strategy (FlexGen: keys and values per token; KIVI: keys "
            "per channel; +Outlier 1%: outliers kept in 16-bit), group size 64. Grey: the 16-bit run that "
            "keeps the same tokens (no quantization), for reference."
        ),
        path=path,
        data=data,
        panels=len(panels),
    )


# ----------------------------------------------------------------------------------------------- NIAH heatmaps
def _niah_grid(run_dir: str) -> pd.DataFrame:
    """Mean score per (context length, depth) of a NIAH run, from its predictions."""
    rows = []
    for record in read_predictions(run_dir):
        if record.get("status", "ok") != "ok" or is_missing(record.get("score")):
            continue
        extra = record.get("extra") or {}
        length = extra.get("context_length", record.get("length"))
        depth = extra.get("depth")
        if is_missing(length) or is_missing(depth):
            continue
        rows.append((float(length), float(depth), float(record["score"])))
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows, columns=["context_length", "depth", "score"])
    return frame.pivot_table(index="depth", columns="context_length", values="score", aggfunc="mean")


def _length_tick(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def niah_heatmaps(runs: pd.DataFrame, out_dir: str | Path) -> list[FigureResult]:
    """NIAH heatmaps (Kamradt style): context length x needle depth, colour = score, one panel per run.

    One PNG per (model, pruner, benchmark, budget- or tokens-given): rows are budgets (or kept tokens), columns
    the precision; quantizer variants are merged by the tables' preference (the paper's quantizer). When runs of
    both compat modes exist, one PNG per mode (named and titled with it).
    """
    if not len(runs):
        return []
    c = runs[(runs["family"] == "niah") & runs["pruner"].notna() & without_layer_config(runs)]
    if c.empty:
        return []
    c = c.copy()
    c["mode"] = ["budget" if not is_missing(b) else "tokens" for b in c["budget"]]
    c = c[paper_quantizer_or_16bit(c)]
    several_modes = c["compat"].nunique() > 1
    group_keys = ["model", "pruner", "benchmark", "mode"] + (["compat"] if several_modes else [])
    picked = pick_runs(c, [*group_keys, "budget", "tokens", "bits"])
    results = []
    out_dir = Path(out_dir)
    for group in sorted_unique(key_tuples(picked, group_keys), group_keys):
        d = match_key(picked, group_keys, group)
        model, pruner, bench, mode = group[:4]
        compat = group[4] if several_modes else None
        in_mode = f" · compat: {labels.label('compat', compat)}" if compat else ""
        row_key = "budget" if mode == "budget" else "tokens"
        row_values = sorted(d[row_key].dropna().unique())
        col_values = sorted(d["bits"].unique(), reverse=True)
        grids, data_rows = {}, []
        for _, run in d.iterrows():
            grid = _niah_grid(run["run_dir"])
            if grid.empty:
                continue
            grids[(run[row_key], run["bits"])] = (grid, run)
            for depth, row in grid.iterrows():
                for length, value in row.items():
                    data_rows.append(
                        {
                            "model": model,
                            "pruner": pruner,
                            "benchmark": bench,
                            "budget": run["budget"],
                            "tokens": run["tokens"],
                            "tokens_nominal": run["tokens_nominal"],
                            "tokens_effective": run["tokens_effective"],
                            "bits": run["bits"],
                            "compat": run["compat"],
                            "context_length": length,
                            "depth": depth,
                            "value": value,
                            "samples": run["samples"],
                            "run_path": run["run_path"],
                        }
                    )
        if not grids:
            continue
        row_values = [r for r in row_values if any((r, b) in grids for b in col_values)]
        col_values = [b for b in col_values if any((r, b) in grids for r in row_values)]
        if not row_values or not col_values:  # e.g. pruner=none: neither a budget nor a token count to lay out
            continue
        name = "niah_" + "_".join(
            str(x) for x in (model, pruner, bench if bench != "niah" else "", mode, compat) if x
        )
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        with matplotlib.rc_context({**STYLE, "axes.grid": False, "axes.titlesize": 10}):
            ncols = len(col_values)
            nrows = len(row_values)
            fig = Figure(figsize=(3.6 * ncols + 1.2, 2.7 * nrows + 1.1), layout="constrained")
            axes = fig.subplots(nrows, ncols, squeeze=False)
            image = None
            any_nan = False
            for i, rv in enumerate(row_values):
                for j, bits in enumerate(col_values):
                    ax = axes[i][j]
                    if (rv, bits) not in grids:
                        ax.set_axis_off()
                        ax.text(
                            0.5,
                            0.5,
                            "no run",
                            ha="center",
                            va="center",
                            transform=ax.transAxes,
                            color="#777777",
                        )
                        continue
                    grid, run = grids[(rv, bits)]
                    values = grid.to_numpy(dtype=float)
                    any_nan |= bool(np.isnan(values).any())
                    cmap = KAMRADT_CMAP.with_extremes(bad="#d9d9d9")
                    image = ax.imshow(
                        np.ma.masked_invalid(values),
                        cmap=cmap,
                        vmin=0,
                        vmax=100,
                        aspect="auto",
                        interpolation="nearest",
                    )
                    lengths, depths = list(grid.columns), list(grid.index)
                    step = max(1, math.ceil(len(lengths) / 6))
                    ax.set_xticks(range(0, len(lengths), step), [_length_tick(v) for v in lengths[::step]])
                    dstep = max(1, math.ceil(len(depths) / 6))
                    ax.set_yticks(range(0, len(depths), dstep), [f"{v:g}%" for v in depths[::dstep]])
                    head = f"budget {labels.budget_label(rv)} · " if mode == "budget" else ""
                    kept = labels.tokens_label(run["tokens_nominal"])
                    nominal, effective = run["tokens_nominal"], run["tokens_effective"]
                    # inputs shorter than the budget keep fewer tokens than asked for: say so
                    fewer = (
                        f" · {labels.tokens_label(round(float(effective)))} kept"
                        if not is_missing(effective)
                        and not is_missing(nominal)
                        and effective < 0.95 * nominal
                        else ""
                    )
                    ax.set_title(
                        f"{head}{labels.setting_label(bits)}: {kept} tokens, {int(bits)}-bit\n"
                        f"average {float(np.nanmean(values)):.1f}{fewer}"
                    )
            fig.supxlabel("Context length (tokens)")
            fig.supylabel("Needle depth (% of the context)")
            if image is not None:
                shrink = 0.9 if nrows <= 2 else 0.5
                fig.colorbar(
                    image,
                    ax=axes,
                    label=SCORE_LABEL,
                    shrink=shrink,
                    aspect=max(20, 10 * nrows * shrink),
                    pad=0.02,
                )
            figure_title(
                fig,
                f"NIAH: {labels.model_label(model)} · {labels.pruner_label(pruner)}"
                + (f" · {labels.benchmark_label(bench)}" if bench != "niah" else "")
                + in_mode,
            )
            data = pd.DataFrame(data_rows)
            path = save_figure(fig, out_dir, name, data)
        results.append(
            FigureResult(
                name=name,
                title=f"NIAH heatmap: {labels.model_label(model)}, {labels.pruner_label(pruner)}"
                + (f", {labels.benchmark_label(bench)}" if bench != "niah" else "")
                + (", by budget" if mode == "budget" else ", by kept tokens")
                + in_mode.replace(" · ", ", "),
                caption=(
                    "Needle retrieval score (0-100, red = missed, green = found) per context length and needle "
                    "depth, one panel per run" + ("; grey: no sample at that point" if any_nan else "") + "."
                ),
                path=path,
                data=data,
                panels=len(grids),
            )
        )
    return results


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
