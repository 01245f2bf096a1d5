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

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from .. import labels
from ..ordering import precision_ordering
from ..paper import PaperNumbers, paper_budget_points
from ..plotting import SCORE_LABEL, FigureResult, setting_handles
from ..render import frame_markdown
from ..selection import budget_runs, key_tuples, match_key, pick_runs, sorted_unique
from ..uncertainty import RESAMPLES, SEED, run_interval
from .spec import Drawn, FigureSpec, Layout, Panel, Selection, first, render

FIGURE2_BITS: tuple[int, ...] = (16, 8, 4)
"""Figure 2's settings: 1x16, 2x8, 4x4 (equal memory at each budget); other bit widths are not drawn."""


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


def _panel_name(panel: dict[str, Any], separator: str = " / ", mode: bool = True) -> str:
    """``SmolLM2-135M / SnapKV · NIAH / compat: paper's code`` (the mode only where panels differ by it)."""
    text = (
        f"{labels.model_label(panel['model'])}{separator}{labels.pruner_label(panel['pruner'])} · "
        f"{labels.benchmark_label(panel['benchmark'], panel['benchmark_length'])}"
    )
    if mode and "compat" in panel:
        text += f" · compat: {labels.label('compat', panel['compat'])}"
    return text


def select(runs: pd.DataFrame, paper: PaperNumbers | None = None) -> Selection | None:
    """Budget runs of Figure 2's settings with their intervals; panels that sweep budgets (when any does)."""
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
                + "; ".join(_panel_name(dict(zip(panel_keys, p))) for p in single)
            )
        panels = [p for p in panels if n_budgets[p] > 1]
    return Selection(picked, panel_keys, panels, notes, context={"modes": modes, "paper": paper})


def _draw_paper(panel: Panel, budgets: list[float]) -> set[float]:
    """The paper's Table 1 cells of the panel's setting as hollow markers; returns their budgets."""
    ax, d, paper = panel.ax, panel.rows, panel.selection.context["paper"]
    model, pruner, bench, _length = panel.key[:4]
    family = labels.benchmark_family(bench)
    drawn_budgets: set[float] = set()
    if not (paper and not labels.is_reduced(bench) and family in ("longbench", "niah")):
        return drawn_budgets
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
        panel.drawn.marks.add("paper")
        drawn_budgets.update(float(b) for b in r["budget"])
    return drawn_budgets


def draw_panel(panel: Panel) -> None:
    ax, d = panel.ax, panel.rows
    budgets = sorted(d["budget"].unique())
    panel_bits = sorted(d["bits"].unique(), reverse=True)
    for i, bits in enumerate(panel_bits):
        points = d[d["bits"] == bits].sort_values("budget")
        panel.drawn.bits.add(int(bits))
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
    drawn_budgets = _draw_paper(panel, budgets)
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
    ax.set_title(_panel_name(panel.keyed, separator="\n", mode=len(panel.selection.context["modes"]) > 1))


def legend(selection: Selection, drawn: Drawn) -> list[Any]:
    handles: list[Any] = setting_handles(sorted(drawn.bits))
    if "paper" in drawn.marks:
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
    return handles


def caption(selection: Selection, drawn: Drawn) -> str:
    modes = selection.context["modes"]
    return (
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
            if "paper" in drawn.marks
            else ""
        )
    )


def write_tables(
    selection: Selection, data: pd.DataFrame, out_dir: Path
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


SPEC = FigureSpec(
    name="fig2_budget",
    title="Figure 2: score against memory budget",
    heading="Figure 2: token-precision trade-off under varying memory budgets (equal memory per budget)",
    caption=caption,
    select=select,
    draw_panel=draw_panel,
    layout=Layout(ncols=lambda s: 3 if len(s.panels) != 4 else 2, panel=(4.8, 3.6), top=1.3),
    legend=legend,
    columns=[
        "model",
        "pruner",
        "benchmark",
        "benchmark_length",
        "compat",
        "budget",
        "bits",
        "setting",
        "tokens_nominal",
        "tokens_effective",
        "quant",
        "ci_low",
        "ci_high",
        "n",
    ],
    extra=write_tables,
)


def figure2_budget(
    runs: pd.DataFrame, out_dir: str | Path, paper: PaperNumbers | None = None
) -> FigureResult | None:
    """Figure 2 (:data:`SPEC`): score against memory budget per setting, with bootstrap intervals, the paper's
    Table 1 cells where they match, and the ordering check beside it."""
    return first(render(SPEC, runs, out_dir, paper))
