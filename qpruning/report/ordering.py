"""The paper's Figure 2 claim as a check: at small budgets, more tokens at lower precision score higher.

At each budget up to 1/16 the paper finds ``4x4 >= 2x8 >= 1x16`` (4x tokens at 4 bits beat 2x at 8 bits, which
beat 1x at 16 bits, at equal memory). :func:`precision_ordering` checks it on Figure 2's plotted points, per panel
(model, benchmark, pruner, compat mode) and budget, and says where it fails; where intervals are known it also
says whether a reversal is clear (the intervals of the two reversed settings do not overlap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from . import labels
from .labels import is_missing
from .selection import key_tuples, match_key, sorted_unique

ORDER_BITS: tuple[int, ...] = (4, 8, 16)
"""The settings in the order the claim ranks them, best first (4x4, 2x8, 1x16)."""
MAX_BUDGET = 1 / 16


@dataclass
class OrderingCheck:
    """The check's results.

    Attributes:
        detail: one row per group and budget: the group's keys, ``budget``, the score of each setting (columns
            ``4x4``, ``2x8``, ``1x16``), ``holds`` (True / False; missing when a setting has no run) and
            ``clear_reversal`` (a reversed pair whose intervals do not overlap).
        summary: one row per group: ``budgets`` checked, ``holds`` (True when it holds at every budget checked),
            ``fails_at`` (the budgets where it fails, ``1/32, 1/16``), ``clear_at`` and ``verdict`` in words.
        claim: the claim in words.
    """

    detail: pd.DataFrame
    summary: pd.DataFrame
    claim: str


def _reversed_clearly(better: pd.Series, worse: pd.Series) -> bool:
    """The setting expected to be better scored lower, and its interval lies wholly below the other's."""
    if better["value"] >= worse["value"]:
        return False
    high, low = better.get("ci_high"), worse.get("ci_low")
    return not is_missing(high) and not is_missing(low) and float(high) < float(low)


def precision_ordering(
    points: pd.DataFrame,
    group_keys: Sequence[str],
    *,
    max_budget: float = MAX_BUDGET,
    order: Sequence[int] = ORDER_BITS,
) -> OrderingCheck:
    """Check ``order`` (best first, by bits) at each budget ``<= max_budget`` of each group of ``points``.

    Args:
        points: one row per plotted point with ``group_keys``, ``budget``, ``bits``, ``value`` and optionally
            ``ci_low`` / ``ci_high``.
        group_keys: the columns that make a group (a Figure 2 panel).
        max_budget: the largest budget checked (the paper: 1/16).
        order: bit widths, best first.
    """
    if len(order) < 2:
        raise ValueError(f"order={list(order)}: give at least two bit widths, best first (e.g. 4, 8, 16)")
    if not max_budget > 0:
        raise ValueError(f"max_budget={max_budget}: give a positive budget fraction (e.g. 0.0625 for 1/16)")
    names = [labels.setting_label(b) for b in order]
    claim = " >= ".join(names) + f" at budgets <= {labels.budget_label(max_budget)}"
    keys = list(group_keys)
    detail_rows, summary_rows = [], []
    small = points[points["budget"] <= max_budget * (1 + 1e-9)] if len(points) else points
    for group in sorted_unique(key_tuples(small, keys), keys) if len(small) else []:
        d = match_key(small, keys, group)
        fails, clear, checked = [], [], []
        for budget in sorted(d["budget"].unique()):
            at = d[d["budget"] == budget]
            row = dict(zip(keys, group), budget=float(budget))
            by_bits = {int(r["bits"]): r for _, r in at.iterrows()}
            for bits, name in zip(order, names):
                row[name] = float(by_bits[bits]["value"]) if bits in by_bits else math.nan
            if all(b in by_bits for b in order):
                pairs = list(zip(order, order[1:]))
                holds = all(by_bits[a]["value"] >= by_bits[b]["value"] for a, b in pairs)
                row["holds"] = holds
                row["clear_reversal"] = any(_reversed_clearly(by_bits[a], by_bits[b]) for a, b in pairs)
                checked.append(budget)
                if not holds:
                    fails.append(budget)
                if row["clear_reversal"]:
                    clear.append(budget)
            else:
                row["holds"] = None
                row["clear_reversal"] = None
            detail_rows.append(row)
        text = ", ".join
        if not checked:
            verdict = "not checked: no budget has all of " + ", ".join(names)
        elif not fails:
            verdict = f"holds at all {len(checked)} budget(s)"
        else:
            verdict = f"fails at {text(labels.budget_label(b) for b in fails)} of {len(checked)} budget(s)"
            verdict += (
                f"; clearly (intervals apart) at {text(labels.budget_label(b) for b in clear)}"
                if clear
                else "; no reversal beyond the bootstrap intervals"
            )
        summary_rows.append(
            dict(
                zip(keys, group),
                budgets=text(labels.budget_label(b) for b in checked),
                holds=(not fails) if checked else None,
                fails_at=text(labels.budget_label(b) for b in fails),
                clear_at=text(labels.budget_label(b) for b in clear),
                verdict=verdict,
            )
        )
    detail_columns = [*keys, "budget", *names, "holds", "clear_reversal"]
    summary_columns = [*keys, "budgets", "holds", "fails_at", "clear_at", "verdict"]
    return OrderingCheck(
        detail=pd.DataFrame.from_records(detail_rows, columns=detail_columns),
        summary=pd.DataFrame.from_records(summary_rows, columns=summary_columns),
        claim=claim,
    )
