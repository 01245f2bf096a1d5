"""Run selection, shared by the tables and the figures: which runs fit an artefact, and one run per cell.

Everything takes the kept complete runs (``Collection.runs``, one row per configuration) or a part of them:

- masks: :func:`one_precision`, :func:`paper_quantizer_or_16bit`; :func:`budget_runs` combines them;
- :func:`pick_runs`: one run per cell, by preference (the one place where 16-bit runs under different ``quant``
  names are merged);
- keys: :func:`cell_key` (a cell's normalized key, numbers as float) and :func:`key_tuples` (rows as tuples,
  missing as None); :func:`sorted_unique` orders them as the report shows them;
- :func:`match_key` / :func:`rows_in`: the rows of one key / of a set of keys.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import Any, SupportsFloat, cast

import pandas as pd

from . import labels
from .labels import is_missing


# ----------------------------------------------------------------------------------------------- keys
def norm_value(value: Any) -> Any:
    """Cell-key form of a value: None for missing, float for numbers (512 == 512.0), else as is."""
    if is_missing(value):
        return None
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return float(cast(SupportsFloat, value))  # numbers.Number declares no __float__; the values here are real
    return value


def cell_key(row: Any, keys: Sequence[str]) -> tuple:
    """The normalized values of ``keys`` in ``row`` (see :func:`norm_value`)."""
    return tuple(norm_value(row[k]) for k in keys)


def key_tuples(df: pd.DataFrame, keys: Sequence[str]) -> list[tuple]:
    """Rows of ``df[keys]`` as tuples with None for missing values (NaN != NaN would split equal panels)."""
    return [
        tuple(None if is_missing(v) else v for v in row) for row in df[list(keys)].itertuples(index=False)
    ]


def sorted_unique(tuples: Iterable[tuple], keys: Sequence[str]) -> list[tuple]:
    """The distinct ``tuples`` (values of ``keys``) in the report's order (:func:`labels.sort_value`)."""
    unique = list(dict.fromkeys(tuples))
    return sorted(unique, key=lambda t: tuple(labels.sort_value(k, v) for k, v in zip(keys, t)))


def match_key(df: pd.DataFrame, keys: Sequence[str], values: tuple) -> pd.DataFrame:
    """The rows of ``df`` whose ``keys`` equal ``values`` (None matches a missing value)."""
    mask = pd.Series(True, index=df.index)
    for k, v in zip(keys, values):
        mask &= df[k].isna() if is_missing(v) else (df[k] == v)
    return df[mask]


def rows_in(df: pd.DataFrame, wanted: Sequence[tuple], keys: Sequence[str]) -> pd.DataFrame:
    """The rows of ``df`` whose ``keys`` are one of ``wanted`` (e.g. the panels that were drawn)."""
    chosen = set(wanted)
    return df[[t in chosen for t in key_tuples(df, keys)]]


# ----------------------------------------------------------------------------------------------- masks
def one_precision(runs: pd.DataFrame) -> pd.Series:
    """Runs that store every kept token at the run's bits: no layer-wise configuration (every layer keeps the same
    tokens and bits) and no precision per token (``tiers``)."""
    mask = runs["layer_config"].isna()
    return mask & runs["tiers"].isna() if "tiers" in runs else mask


def paper_quantizer_or_16bit(runs: pd.DataFrame, quant: str | None = None) -> pd.Series:
    """16-bit runs, or quantized runs with ``quant`` (default: the paper's quantizer for the run's pruner)."""
    return pd.Series(
        [
            (not is_missing(b) and int(b) == 16) or q == (quant or labels.paper_quant(p))
            for b, q, p in zip(runs["bits"], runs["quant"], runs["pruner"])
        ],
        index=runs.index,
        dtype=bool,
    )


def budget_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Budget-given runs with a pruner, no layer-wise configuration, the paper's quantizer (or 16-bit)."""
    if not len(runs):
        return runs
    c = runs[
        runs["budget"].notna()
        & runs["pruner"].notna()
        & (runs["pruner"] != "none")
        & one_precision(runs)
    ]
    return c[paper_quantizer_or_16bit(c)] if len(c) else c


# ----------------------------------------------------------------------------------------------- one run per cell
def pick_runs(candidates: pd.DataFrame, cell_keys: Sequence[str]) -> pd.DataFrame:
    """One run per cell among ``candidates``, by preference, with ``n_candidates`` (runs that fitted the cell).

    Preference: the full benchmark over a quick variant (``niah_small``), ``compat=paper`` (what the paper's code
    computed, docs/fidelity.md) over ``compat=methods``, the paper's quantizer for the pruner
    (KIVI; FlexGen for Ada-KV and HeadKV) or no quantization, group size 64, nominal budget accounting, then the
    most recent run. 16-bit runs with different ``quant`` labels are the same computation, so this is where they
    are merged.
    """
    if candidates.empty:
        return candidates.assign(n_candidates=pd.Series(dtype="int64"))
    c = candidates.copy()
    c["_cell"] = [cell_key(r, cell_keys) for _, r in c.iterrows()]
    # the paper's quantizer by name first: a 16-bit run stored under it over one under another name (kivi_rot)
    c["_pref_quant"] = paper_quantizer_or_16bit(c).astype(int) + [
        int(q == labels.paper_quant(p)) for q, p in zip(c["quant"], c["pruner"])
    ]
    c["_pref_group"] = [
        1 if not is_missing(g) and int(g) == labels.DEFAULT_GROUP_SIZE else 0 for g in c["group_size"]
    ]
    c["_pref_mode"] = [1 if is_missing(m) or m == "nominal" else 0 for m in c["budget_mode"]]
    c["_pref_full"] = [0 if labels.is_reduced(b) else 1 for b in c["benchmark"]]
    compat = c["compat"] if "compat" in c else pd.Series("methods", index=c.index)
    c["_pref_compat"] = [1 if m == "paper" else 0 for m in compat]
    c = c.sort_values(
        ["_pref_full", "_pref_compat", "_pref_quant", "_pref_group", "_pref_mode", "mtime", "run_path"],
        ascending=[False, False, False, False, False, False, True],
    )
    counts = c["_cell"].value_counts()
    picked = c.drop_duplicates(subset="_cell", keep="first").copy()
    picked["n_candidates"] = [int(counts[k]) for k in picked["_cell"]]
    return picked.drop(columns=["_cell", "_pref_full", "_pref_compat", "_pref_quant", "_pref_group", "_pref_mode"])
