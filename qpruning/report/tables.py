"""The paper's Tables 1-4 from collected runs: one function per table.

Each table function takes the kept complete runs (``Collection.runs``) and returns a :class:`ReportTable`
(``render.py``: the table model and its CSV / Markdown / LaTeX writers), or ``None`` when no run fits it (the
index then says "no runs yet"). Which runs fit and which one fills a cell: ``selection.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from qpruning.identity import KEY_FIELDS

from . import labels
from .labels import is_missing
from .paper import PaperNumbers
from .render import ReportTable
from .selection import (
    cell_key,
    key_tuples,
    norm_value,
    one_precision,
    paper_quantizer_or_16bit,
    pick_runs,
    sorted_unique,
)

logger = logging.getLogger(__name__)

TABLE1_TOKENS: tuple[int, ...] = (128, 512, 2048)
TABLE1_BITS: tuple[int, ...] = (16, 8, 4, 2)


def _chosen_notes(picked: pd.DataFrame) -> list[str]:
    notes = []
    several = picked[picked["n_candidates"] > 1] if "n_candidates" in picked else picked.iloc[0:0]
    if len(several):
        notes.append(
            f"{len(several)} cell(s) had several fitting runs (e.g. 16-bit runs under different quantizer names); "
            "one was chosen by preference: compat=paper, the paper's quantizer, group size 64, nominal budget, "
            "most recent."
        )
    dups = picked[picked["n_runs"] > 1] if "n_runs" in picked else picked.iloc[0:0]
    if len(dups):
        notes.append(
            f"{len(dups)} cell(s) come from a configuration that was run more than once; the most recent complete "
            "run is shown (see the duplicates list)."
        )
    failed = picked[picked["failed"].fillna(0).astype(float) > 0] if "failed" in picked else picked.iloc[0:0]
    if len(failed):
        notes.append(f"{len(failed)} cell(s) come from runs with failed samples (scored without them).")
    return notes


def _cells_frame(records: list[dict[str, Any]], keys: Sequence[str]) -> pd.DataFrame:
    columns = [*keys, "value", "samples", "n_runs", "run_path", "paper", "diff"]
    frame = pd.DataFrame.from_records(records, columns=columns) if records else pd.DataFrame(columns=columns)
    for column in ("value", "samples", "n_runs", "paper", "diff"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["diff"] = frame["value"] - frame["paper"]
    return frame


def _run_cell(run: Any, value: Any, paper: Any = math.nan) -> dict[str, Any]:
    return {
        "value": math.nan if is_missing(value) else float(value),
        "samples": run["samples"],
        "n_runs": run["n_runs"],
        "run_path": run["run_path"],
        "paper": math.nan if is_missing(paper) else float(paper),
    }


def _published(paper: PaperNumbers | None, name: str, keys: Sequence[str]) -> dict[tuple, float]:
    """The paper's cells of table ``name`` by their values of ``keys`` (cell-key form: numbers as float)."""
    if not paper:
        return {}
    return {tuple(norm_value(p[k]) for k in keys): p["value"] for _, p in paper.get(name).iterrows()}


# ----------------------------------------------------------------------------------------------- Table 1
def table1(runs: pd.DataFrame, paper: PaperNumbers | None = None) -> ReportTable | None:
    """Table 1: pruner x kept tokens x bits, one block per (model, benchmark) on LongBench and NIAH.

    Runs: benchmark family LongBench or NIAH, a pruner, ``tokens`` given (not a budget), no layer-wise
    configuration, and either 16-bit or the paper's quantizer for the pruner (KIVI; FlexGen for Ada-KV and HeadKV)
    at group size 64. Rows and columns are those that exist; holes in the grid are listed as missing.
    """
    mask = (
        (
            runs["family"].isin(["longbench", "niah"])
            & runs["pruner"].notna()
            & (runs["pruner"] != "none")
            & runs["tokens"].notna()
            & one_precision(runs)
        )
        if len(runs)
        else pd.Series(dtype=bool)
    )
    if not len(runs) or not mask.any():
        return None
    cands = runs[mask]
    cands = cands[
        paper_quantizer_or_16bit(cands)
        & ((cands["bits"] == 16) | (cands["group_size"] == labels.DEFAULT_GROUP_SIZE))
    ]
    if cands.empty:
        return None
    row_keys, col_keys = ["model", "benchmark", "pruner"], ["tokens", "bits"]
    picked = pick_runs(cands, row_keys + col_keys)
    published = _published(paper, "table1", row_keys + col_keys)
    records = []
    for _, run in picked.iterrows():
        cell = {k: norm_value(run[k]) for k in row_keys + col_keys}
        family = None if labels.is_reduced(run["benchmark"]) else run["family"]
        ref = published.get((run["model"], family, run["pruner"], float(run["tokens"]), float(run["bits"])))
        records.append({**cell, **_run_cell(run, run["score"], ref)})
    cells = _cells_frame(records, row_keys + col_keys)
    rows = sorted_unique((cell_key(r, row_keys) for _, r in cells.iterrows()), row_keys)
    tokens = sorted({t for t in cells["tokens"].dropna()})
    bits = sorted({b for b in cells["bits"].dropna()}, reverse=True)
    table = ReportTable(
        name="table1",
        title="Table 1: quantized pruned tokens on LongBench and NIAH",
        caption=(
            "Score (0-100) per pruner, kept tokens and precision. Quantizer: KIVI, except FlexGen for Ada-KV and "
            "HeadKV (as in the paper); group size 64; no layer-wise configuration. Bold: best per column and "
            "block; underlined: second best."
        ),
        cells=cells,
        row_keys=row_keys,
        col_keys=col_keys,
        row_order=rows,
        col_order=[(float(t), float(b)) for t in tokens for b in bits],
        key_titles={"model": "Model", "benchmark": "Benchmark", "pruner": "Pruning method"},
        col_prefix={"tokens": "Token="},
        highlight_within=("model", "benchmark"),
    )
    table.missing = table.holes()
    if paper:
        ours = {
            (r[0], r[1], r[2], c[0], c[1]) for (r, c), v in table.lookup("value").items() if not is_missing(v)
        }
        models = set(cells["model"])
        absent = [k for k in published if k[0] in models and k not in ours]
        if absent:
            table.missing.append(
                f"{len(absent)} of the paper's {len(published)} Table 1 cells have no run of ours for the same model"
            )
    table.notes = _chosen_notes(picked)
    return table


# ----------------------------------------------------------------------------------------------- Table 2
TABLE2_COLUMNS: tuple[str, ...] = ("tokens", *labels.CATEGORY_ORDER, "ruler_8k")


def _table2_label(key: str, value: Any) -> str:
    if key == "column":
        return {"tokens": "Token", "ruler_8k": "RULER-8k"}.get(
            value, labels.CATEGORY_LABELS.get(value, str(value))
        )
    return labels.label(key, value)


def table2(
    runs: pd.DataFrame,
    paper: PaperNumbers | None = None,
    budgets: Sequence[float] | None = (1 / 16,),
    pruners: Sequence[str] = ("pyramidkv",),
) -> ReportTable | None:
    """Table 2: LongBench task categories and RULER-8k per (model, budget, token-precision setting).

    Runs: ``budget`` given, pruner in ``pruners``, the paper's quantizer, no layer-wise configuration; LongBench
    runs give the category scores, RULER runs at 8k tokens the last column. ``budgets`` (default 1/16, the
    paper's) restricts the rows; when none of them has a run, every budget that has one is shown (with a note).
    """
    if not len(runs):
        return None
    base = runs[runs["budget"].notna() & runs["pruner"].isin(list(pruners)) & one_precision(runs)]
    base = base[paper_quantizer_or_16bit(base)] if len(base) else base
    lb = base[(base["family"] == "longbench")]
    ruler = base[(base["family"] == "ruler") & (base["length_label"] == "8k")]
    notes: list[str] = []
    if budgets is not None:
        wanted = {round(float(b), 12) for b in budgets}
        in_budget = lambda df: df[[round(float(b), 12) in wanted for b in df["budget"]]]  # noqa: E731
        if len(in_budget(lb)) + len(in_budget(ruler)):
            lb, ruler = in_budget(lb), in_budget(ruler)
        elif len(lb) + len(ruler):
            notes.append(
                "No run at the paper's budget ("
                + ", ".join(labels.budget_label(b) for b in budgets)
                + "); showing every budget that has runs."
            )
    if len(lb) + len(ruler) == 0:
        return None
    row_keys, col_keys = ["model", "budget", "bits"], ["column"]
    published: dict[tuple, float] = {}
    if paper:
        for _, p in paper.get("table2").iterrows():
            column = "ruler_8k" if p["benchmark"] == "ruler" else p["category"]
            key = (p["model"], round(float(p["budget"]), 12), float(p["bits"]))
            published[key + (column,)] = p["value"]
            published[key + ("tokens",)] = float(p["tokens"])
    records = []
    picked_all = []
    for frame, columns in ((lb, labels.CATEGORY_ORDER), (ruler, ("ruler_8k",))):
        if frame.empty:
            continue
        picked = pick_runs(frame, ["model", "budget", "bits", "benchmark"])
        # The full benchmark wins over a small variant (``longbench_small``) of the same cell.
        picked = picked.assign(_variant=[int(labels.is_reduced(b)) for b in picked["benchmark"]])
        picked = picked.sort_values("_variant", kind="stable").drop_duplicates(["model", "budget", "bits"])
        picked_all.append(picked)
        for _, run in picked.iterrows():
            key = (run["model"], round(float(run["budget"]), 12), float(run["bits"]))
            exact = not labels.is_reduced(run["benchmark"])
            cell = {"model": run["model"], "budget": float(run["budget"]), "bits": float(run["bits"])}
            for column in columns:
                value = run["score"] if column == "ruler_8k" else (run["category_scores"] or {}).get(column)
                ref = published.get((*key, column)) if exact else None
                records.append({**cell, "column": column, **_run_cell(run, value, ref)})
            ref = published.get((*key, "tokens")) if exact else None
            records.append({**cell, "column": "tokens", **_run_cell(run, run["tokens_nominal"], ref)})
    cells = _cells_frame(records, row_keys + col_keys)
    cells = cells.drop_duplicates(subset=row_keys + col_keys, keep="first").reset_index(drop=True)
    rows = sorted_unique((cell_key(r, row_keys) for _, r in cells.iterrows()), row_keys)
    table = ReportTable(
        name="table2",
        title="Table 2: token-precision trade-off per task type",
        caption=(
            "LongBench task-category scores and RULER-8k (0-100) per token-precision setting at a fixed memory "
            f"budget; pruner: {', '.join(labels.pruner_label(p) for p in pruners)}; KIVI; group size 64. "
            "Token: the budget's nominal kept tokens (budget x full cache x 16 / bits). "
            "Bold: best per column and model."
        ),
        cells=cells,
        row_keys=row_keys,
        col_keys=col_keys,
        row_order=rows,
        col_order=[(c,) for c in TABLE2_COLUMNS],
        label_fn=_table2_label,
        key_titles={"model": "Model", "budget": "Budget", "bits": "Bit"},
        highlight_within=("model", "budget"),
        underline=False,
        info_cols={("tokens",)},
        col_decimals={("tokens",): 0},
    )
    table.missing = table.holes()
    table.notes = notes + (_chosen_notes(pd.concat(picked_all)) if picked_all else [])
    return table


# ----------------------------------------------------------------------------------------------- Table 3
def table3(runs: pd.DataFrame, paper: PaperNumbers | None = None, quant: str = "kivi") -> ReportTable | None:
    """Table 3: quantization group size (32 / 64 / 128) per (model, pruner, tokens, bits) on LongBench.

    Runs: LongBench family, ``tokens`` given, quantized with ``quant``, no layer-wise configuration. A row is shown
    when at least one of its runs uses a group size other than 64 (the default that every other table uses).
    """
    if not len(runs):
        return None
    cands = runs[
        (runs["family"] == "longbench")
        & runs["tokens"].notna()
        & (runs["quant"] == quant)
        & (runs["bits"] < 16)
        & runs["group_size"].notna()
        & one_precision(runs)
    ]
    row_keys, col_keys = ["model", "benchmark", "pruner", "tokens", "bits"], ["group_size"]
    if cands.empty:
        return None
    non_default = {
        cell_key(r, row_keys)
        for _, r in cands.iterrows()
        if int(r["group_size"]) != labels.DEFAULT_GROUP_SIZE
    }
    cands = cands[[cell_key(r, row_keys) in non_default for _, r in cands.iterrows()]]
    if cands.empty:
        return None
    picked = pick_runs(cands, row_keys + col_keys)
    published = _published(paper, "table3", row_keys + col_keys)
    records = []
    for _, run in picked.iterrows():
        cell = {k: norm_value(run[k]) for k in row_keys + col_keys}
        ref = published.get(tuple(cell[k] for k in row_keys + col_keys))
        records.append({**cell, **_run_cell(run, run["score"], ref)})
    cells = _cells_frame(records, row_keys + col_keys)
    groups = sorted({32.0, 64.0, 128.0} | set(cells["group_size"].dropna()))
    present_groups = set(cells["group_size"].dropna())
    table = ReportTable(
        name="table3",
        title="Table 3: quantization group size",
        caption=f"LongBench score (0-100) per quantization group size; {labels.quant_label(quant)} quantizer.",
        cells=cells,
        row_keys=row_keys,
        col_keys=col_keys,
        row_order=sorted_unique((cell_key(r, row_keys) for _, r in cells.iterrows()), row_keys),
        col_order=[(g,) for g in groups if g in present_groups or g in (32.0, 64.0, 128.0)],
        key_titles={
            "model": "Model",
            "benchmark": "Benchmark",
            "pruner": "Method",
            "tokens": "Tokens",
            "bits": "Bits",
        },
        col_prefix={"group_size": "group="},
    )
    table.missing = table.holes()
    table.notes = _chosen_notes(picked)
    return table


# ----------------------------------------------------------------------------------------------- Table 4
TABLE4_ROW_KEYS = ["model", "pruner", "device", "tokens", "bits"]
TABLE4_METRICS = {
    "tokens_per_s": "Throughput (tokens/s)",
    "kv_mb_per_item": "KV cache (MB / batch item)",
    "longbench_avg": "LongBench avg",
    "niah_avg": "NIAH avg",
}
_MEASUREMENT_KEYS = ["model", "device", "tokens", "bits", "batch", "pruner", "quant"]


def _latest_measurements(throughput: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """One throughput row per measurement key (the latest ``date``, then the last read), and how many there were."""
    t = throughput.copy()
    t["_date"] = pd.to_datetime(t["date"], errors="coerce", utc=True)
    t["_cell"] = [cell_key(r, _MEASUREMENT_KEYS) for _, r in t.iterrows()]
    t["_order"] = range(len(t))
    t = t.sort_values(["_date", "_order"], ascending=[False, False], na_position="last")
    repeats = t["_cell"].value_counts()
    return t.drop_duplicates(subset="_cell", keep="first"), repeats


def _table4_published(paper: PaperNumbers | None) -> dict[tuple, float]:
    """The paper's Table 4 by (model, pruner, tokens, bits, metric, batch); batch None for per-setting metrics."""
    published: dict[tuple, float] = {}
    if paper:
        for _, p in paper.get("table4").iterrows():
            metric = {"kv_memory_per_item": "kv_mb_per_item"}.get(p["metric"], p["metric"])
            batch = None if is_missing(p["batch"]) else float(p["batch"])
            published[(p["model"], p["pruner"], float(p["tokens"]), float(p["bits"]), metric, batch)] = p["value"]
    return published


def _throughput_cells(t: pd.DataFrame, repeats: pd.Series, published: dict[tuple, float]) -> pd.DataFrame:
    """Throughput per batch and KV memory per batch item, per measurement row."""
    records = []
    for _, m in t.iterrows():
        cell = {
            "model": m["model"],
            "pruner": m["pruner"],
            "device": m["device"],
            "tokens": float(m["tokens"]),
            "bits": float(m["bits"]),
        }
        base = (m["model"], m["pruner"], float(m["tokens"]), float(m["bits"]))
        reps = m["repeats"] if "repeats" in t.columns and not is_missing(m.get("repeats")) else 1
        common = {"samples": reps, "n_runs": int(repeats[m["_cell"]]), "run_path": m["source_file"]}
        records.append(
            {
                **cell,
                "metric": "tokens_per_s",
                "batch": float(m["batch"]),
                "value": m["tokens_per_s"],
                **common,
                "paper": published.get((*base, "tokens_per_s", float(m["batch"])), math.nan),
            }
        )
        records.append(
            {
                **cell,
                "metric": "kv_mb_per_item",
                "batch": None,
                "value": m["kv_bytes_per_item"] / 1e6 if not is_missing(m["kv_bytes_per_item"]) else math.nan,
                **common,
                "paper": published.get((*base, "kv_mb_per_item", None), math.nan),
            }
        )
    # KV memory is per setting, not per batch: keep one value per row (the first, i.e. the latest measurement).
    keys = TABLE4_ROW_KEYS + ["metric", "batch"]
    return _cells_frame(records, keys).drop_duplicates(subset=keys, keep="first")


def _accuracy_cells(cells: pd.DataFrame, runs: pd.DataFrame, published: dict[tuple, float]) -> list[dict[str, Any]]:
    """LongBench / NIAH averages of the runs with a row's model, pruner, tokens, bits (and the paper's quantizer)."""
    accuracy = []
    # first-appearance order (a set's order changes with the hash seed, and so would _cells.csv's rows)
    for row in dict.fromkeys(tuple(r) for r in cells[TABLE4_ROW_KEYS].itertuples(index=False)):
        model, pruner, _device, tokens, bits = row
        for family, metric in (("longbench", "longbench_avg"), ("niah", "niah_avg")):
            quant = None if int(bits) == 16 else labels.paper_quant(pruner)
            match = runs[
                (runs["model"] == model)
                & (runs["pruner"] == pruner)
                & (runs["benchmark"] == family)
                & (runs["tokens"] == tokens)
                & (runs["bits"] == bits)
                & one_precision(runs)
            ]
            if quant is not None:
                match = match[(match["quant"] == quant) & (match["group_size"] == labels.DEFAULT_GROUP_SIZE)]
            if match.empty:
                continue
            run = pick_runs(match, ["model"]).iloc[0]
            ref = published.get((model, pruner, tokens, bits, metric, None), math.nan)
            accuracy.append(
                {
                    **dict(zip(TABLE4_ROW_KEYS, row)),
                    "metric": metric,
                    "batch": None,
                    **_run_cell(run, run["score"], ref),
                }
            )
    return accuracy


def _table4_label(key: str, value: Any) -> str:
    if key == "metric":
        return TABLE4_METRICS.get(value, str(value))
    if key == "batch":
        return f"batch={int(value)}"
    return labels.label(key, value)


def table4(
    throughput: pd.DataFrame, runs: pd.DataFrame | None = None, paper: PaperNumbers | None = None
) -> ReportTable | None:
    """Table 4: decoding throughput per batch size, KV memory per batch item, and accuracy, per setting.

    Throughput rows come from benchmark CSV files (:func:`read_throughput`); when the same (model, device,
    tokens, bits, batch, pruner, quant) was measured more than once the latest ``date`` is kept. LongBench / NIAH
    averages are joined from runs with the same model, pruner, quantizer, ``tokens`` and bits (group size 64).
    """
    if throughput is None or throughput.empty:
        return None
    t, repeats = _latest_measurements(throughput)
    notes = []
    if int((repeats > 1).sum()):
        notes.append(
            f"{int((repeats > 1).sum())} throughput measurement(s) were repeated; the latest date is shown."
        )
    row_keys, col_keys = list(TABLE4_ROW_KEYS), ["metric", "batch"]
    published = _table4_published(paper)
    cells = _throughput_cells(t, repeats, published)
    accuracy = _accuracy_cells(cells, runs, published) if runs is not None and len(runs) else []
    if accuracy:
        cells = pd.concat([cells, _cells_frame(accuracy, row_keys + col_keys)], ignore_index=True)
        cells["diff"] = cells["value"] - cells["paper"]
    batches = sorted({b for b in cells["batch"].dropna()})
    col_order = [("tokens_per_s", b) for b in batches] + [("kv_mb_per_item", None)]
    col_order += [(m, None) for m in ("longbench_avg", "niah_avg") if (cells["metric"] == m).any()]
    rows = sorted_unique((cell_key(r, row_keys) for _, r in cells.iterrows()), row_keys)
    table = ReportTable(
        name="table4",
        title="Table 4: decoding throughput and KV memory per token-precision setting",
        caption=(
            "Decoding throughput (tokens/s) at each batch size and KV cache memory per batch item (MB = 1,000,000 "
            "bytes) from the throughput benchmark CSV files, with LongBench / NIAH averages (0-100) of the "
            "matching runs. The paper measured Mistral-7B-v0.2 with SnapKV + KIVI on one A100."
        ),
        cells=cells.reset_index(drop=True),
        row_keys=row_keys,
        col_keys=col_keys,
        row_order=rows,
        col_order=col_order,
        label_fn=_table4_label,
        key_titles={
            "model": "Model",
            "pruner": "Pruner",
            "device": "Device",
            "tokens": "Tokens",
            "bits": "Bits",
        },
        col_decimals={c: 2 for c in col_order if c[0] in ("longbench_avg", "niah_avg")},
    )
    table.missing = table.holes()
    table.notes = notes + [
        "Throughput cells: 'samples' is the number of timed repeats of the measurement (1 if not recorded)."
    ]
    return table


# ----------------------------------------------------------------------------------------------- side by side
COMPAT_MODES: tuple[str, str] = ("methods", "paper")
"""The two compat modes (docs/fidelity.md): the methods' definitions and what the paper's code computed."""
DIFF = "diff"
_SHOWN_KEYS = (
    "model",
    "benchmark",
    "benchmark_length",
    "pruner",
    "quant",
    "compat",
    "budget",
    "tokens",
    "bits",
)
_EXTRA_KEYS = ("group_size", "budget_mode", "layer_config")


def _shown_keys(frame: pd.DataFrame, keys: Sequence[str], always: Sequence[str]) -> list[str]:
    """``keys`` that identify rows of ``frame``: those in ``always`` with a value somewhere, and the others that
    take more than one value (a constant column says nothing), in the order of ``keys``."""
    out = []
    for key in keys:
        values = {norm_value(v) for v in frame[key]}
        if (key in always and values != {None}) or len(values) > 1:
            out.append(key)
    return out


def _side_by_side_label(names: dict[str, str], row_keys: Sequence[str]) -> Any:
    """Labels of the side-by-side tables: ``names`` for the column kinds; bits as the token-precision setting
    (``4x4``) where rows are budgets (equal memory per row), else as ``4-bit``."""
    settings = "budget" in row_keys and "tokens" not in row_keys

    def label_fn(key: str, value: Any) -> str:
        if key in ("compat_column", "variant"):
            return names.get(value, str(value))
        if key == "benchmark_length":
            return labels.length_label(value)
        if key == "bits" and settings and not is_missing(value):
            return labels.setting_label(value)
        return labels.label(key, value)

    return label_fn


def _with_difference(cells: pd.DataFrame, keys: Sequence[str], minuend: str, subtrahend: str) -> pd.DataFrame:
    """``cells`` plus a :data:`DIFF` cell (``minuend - subtrahend``) wherever both exist; the last of ``keys``
    is the column that holds ``minuend`` / ``subtrahend`` / :data:`DIFF`."""
    keys = list(keys)
    values = {cell_key(r, keys): r["value"] for _, r in cells.iterrows() if not is_missing(r["value"])}
    diffs = []
    for key, value in values.items():
        other = values.get((*key[:-1], subtrahend))
        if key[-1] == minuend and other is not None:
            diffs.append({**dict(zip(keys, (*key[:-1], DIFF))), "value": value - other, "run_path": None})
    return pd.concat([cells, _cells_frame(diffs, keys)], ignore_index=True)


def compat_modes(runs: pd.DataFrame) -> ReportTable | None:
    """Scores of ``compat=methods`` and ``compat=paper`` side by side, and the difference (paper - methods).

    A row is a configuration (every key field but ``compat``: benchmark, model, pruner, quantizer, budget or tokens,
    bits...) that has a complete run in both modes; None when no configuration has both.
    """
    if not len(runs) or "compat" not in runs:
        return None
    c = runs[runs["score"].notna() & runs["compat"].isin(COMPAT_MODES)]  # collect: no mode recorded = methods
    pair_keys = [k for k in KEY_FIELDS if k != "compat"]
    keys = [cell_key(r, pair_keys) for _, r in c.iterrows()]
    modes: dict[tuple, set[str]] = {}
    for key, mode in zip(keys, c["compat"]):
        modes.setdefault(key, set()).add(mode)
    c = c[[len(modes[key]) == len(COMPAT_MODES) for key in keys]]
    if c.empty:
        return None
    row_keys = _shown_keys(
        c,
        [k for k in _SHOWN_KEYS if k != "compat"] + list(_EXTRA_KEYS),
        ("model", "benchmark", "pruner", "quant", "budget", "tokens", "bits"),
    )
    records = []
    for _, run in c.iterrows():
        records.append(
            {
                **{k: norm_value(run[k]) for k in row_keys},
                "compat_column": run["compat"],
                **_run_cell(run, run["score"]),
            }
        )
    cells = _cells_frame(records, [*row_keys, "compat_column"])
    cells = _with_difference(cells, [*row_keys, "compat_column"], "paper", "methods")
    rows = sorted_unique((cell_key(r, row_keys) for _, r in cells.iterrows()), row_keys)
    names = {"methods": "compat=methods", "paper": "compat=paper", DIFF: "Δ (paper − methods)"}
    table = ReportTable(
        name="compat_modes",
        title="Compat modes side by side: the methods' definitions and the paper's code",
        caption=(
            "Score of each configuration run in both compat modes (docs/fidelity.md): `compat=methods` (the "
            "methods as their papers define them) and `compat=paper` (what the paper's code computed), and the "
            "difference paper − methods. Only configurations with a complete run in both modes are shown."
        ),
        cells=cells,
        row_keys=row_keys,
        col_keys=["compat_column"],
        row_order=rows,
        col_order=[("methods",), ("paper",), (DIFF,)],
        label_fn=_side_by_side_label(names, row_keys),
        key_titles=_KEY_TITLES,
        info_cols={(DIFF,)},
        decimals=2,
    )
    table.missing = []
    table.notes = _chosen_notes(c.assign(n_candidates=1))
    return table


def rotation(runs: pd.DataFrame) -> ReportTable | None:
    """A rotated quantizer (``X_rot``) against its unrotated quantizer ``X``: per benchmark, both scores and the
    difference (rotated - unrotated), rows per (model, pruner, quantizer, budget or tokens, bits).

    Built when a run of a ``*_rot`` quantizer exists; the unrotated runs of the same pruner, quantizer and compat
    mode fill the other column (and 16-bit runs under the unrotated name give the 1x16 rows). None otherwise.
    """
    if not len(runs):
        return None
    c = runs[runs["score"].notna() & runs["quant"].notna() & one_precision(runs)].copy()
    c["base_quant"] = [labels.rotated_base(q) or q for q in c["quant"]]
    c["variant"] = ["rotated" if labels.rotated_base(q) else "plain" for q in c["quant"]]
    family_keys = ["model", "pruner", "base_quant", "compat", *_EXTRA_KEYS]
    if not (c["variant"] == "rotated").any():
        return None
    # the budgets (or token counts) that have a rotated run; every precision at them (16-bit: the reference)
    point_keys = [*family_keys, "budget", "tokens"]
    rotated_points = {cell_key(r, point_keys) for _, r in c[c["variant"] == "rotated"].iterrows()}
    c = c[[cell_key(r, point_keys) in rotated_points for _, r in c.iterrows()]]
    c = c.assign(quant=c["base_quant"])
    row_keys = _shown_keys(
        c,
        ["model", "pruner", "quant", "compat", "budget", "tokens", "bits", *_EXTRA_KEYS],
        ("model", "pruner", "quant", "budget", "tokens", "bits"),
    )
    benches = sorted_unique(
        key_tuples(c, ["benchmark", "benchmark_length"]), ["benchmark", "benchmark_length"]
    )
    c = c.assign(bench=[labels.benchmark_label(b, n) for b, n in zip(c["benchmark"], c["benchmark_length"])])
    col_keys = ["bench", "variant"]
    picked = pick_runs(c, [*row_keys, *col_keys])
    records = []
    for _, run in picked.iterrows():
        cell = {k: norm_value(run[k]) for k in [*row_keys, *col_keys]}
        records.append({**cell, **_run_cell(run, run["score"])})
    cells = _cells_frame(records, [*row_keys, *col_keys])
    cells = _with_difference(cells, [*row_keys, *col_keys], "rotated", "plain")
    columns = list(dict.fromkeys(labels.benchmark_label(b, n) for b, n in benches))
    names = {"plain": "unrotated", "rotated": "rotated", DIFF: "Δ (rotated − unrotated)"}
    table = ReportTable(
        name="rotation",
        title="Rotated against unrotated quantization",
        caption=(
            "Score per benchmark with a quantizer applied after a rotation (`X_rot`, e.g. KIVI+rotation) and "
            "without it (`X`), and the difference rotated − unrotated, per budget (or kept tokens) and "
            "precision. 16-bit rows store no quantized values: they are the reference."
        ),
        cells=cells,
        row_keys=row_keys,
        col_keys=col_keys,
        row_order=sorted_unique((cell_key(r, row_keys) for _, r in cells.iterrows()), row_keys),
        col_order=[(b, v) for b in columns for v in ("plain", "rotated", DIFF)],
        label_fn=_side_by_side_label(names, row_keys),
        key_titles=_KEY_TITLES,
        info_cols={(b, DIFF) for b in columns},
        decimals=2,
    )
    table.missing = []
    table.notes = _chosen_notes(picked)
    return table


def _interval_table(
    picked: pd.DataFrame, row_keys: list[str], stats: dict[str, str], name: str, title: str, caption: str,
    key_titles: dict[str, str],
) -> tuple[ReportTable, dict[tuple, tuple[float, float, float]]]:
    """A table of ``picked`` runs (rows ``row_keys``, one column group per benchmark ``bench``) with each run's
    score, its 95 % bootstrap interval (``low``, ``high``) and, when ``stats`` names it, the KV KiB held (``kib``);
    and the ``(score, low, high)`` found per ``(row key, bench)``, which the verdicts read."""
    from .uncertainty import run_interval

    records, found = [], {}
    for _, run in picked.iterrows():
        interval = run_interval(run["run_dir"])
        key = tuple(norm_value(run[k]) for k in row_keys)
        found[(key, run["bench"])] = (float(run["score"]), interval.low, interval.high)
        values = {"score": run["score"], "low": interval.low, "high": interval.high}
        if "kib" in stats:
            values["kib"] = float(run["kv_bytes"]) / 1024 if not is_missing(run["kv_bytes"]) else math.nan
        for stat, value in values.items():
            records.append({**dict(zip(row_keys, key)), "bench": run["bench"], "stat": stat, **_run_cell(run, value)})
    cells = _cells_frame(records, [*row_keys, "bench", "stat"])
    columns = sorted(dict.fromkeys(picked["bench"]))
    table = ReportTable(
        name=name,
        title=title,
        caption=caption,
        cells=cells,
        row_keys=row_keys,
        col_keys=["bench", "stat"],
        row_order=sorted_unique((cell_key(r, row_keys) for _, r in cells.iterrows()), row_keys),
        col_order=[(b, stat) for b in columns for stat in stats],
        label_fn=_side_by_side_label(stats, row_keys),
        key_titles=key_titles,
        info_cols={(b, stat) for b in columns for stat in stats if stat != "score"},
        decimals=2,
    )
    table.missing = []
    return table, found


TIER_STATS = {"score": "score", "low": "95% low", "high": "95% high"}


def _precision(tiers: Any, bits: Any) -> str:
    """A run's precision as a row label: ``4x4`` (one precision at equal memory) or ``tiers 0.1x8+0.4x4+0.5x2``."""
    return labels.setting_label(bits) if is_missing(tiers) else f"tiers {tiers}"


def tiers(runs: pd.DataFrame) -> ReportTable | None:
    """Precision per token (``quant.tiers``) against one precision at the same budget (equal bytes): per benchmark,
    each setting's score and its 95 % bootstrap interval (:func:`~qpruning.report.uncertainty.run_interval`), rows
    per (model, pruner, quantizer, budget): the uniform 1x16 / 2x8 / 4x4 and each tiering. The notes say, per row
    group and benchmark, whether a tiering beats the best uniform point beyond the intervals.

    Built when a tiered run exists; None otherwise."""

    if not len(runs) or "tiers" not in runs or not runs["tiers"].notna().any():
        return None
    c = runs[runs["score"].notna() & runs["budget"].notna() & runs["layer_config"].isna()].copy()
    c["precision"] = [_precision(t, b) for t, b in zip(c["tiers"], c["bits"])]
    point_keys = ["model", "pruner", "quant", "compat", "budget", *_EXTRA_KEYS]
    tiered_points = {cell_key(r, point_keys) for _, r in c[c["tiers"].notna()].iterrows()}
    c = c[[cell_key(r, point_keys) in tiered_points for _, r in c.iterrows()]]
    c = c.assign(bench=[labels.benchmark_label(b, n) for b, n in zip(c["benchmark"], c["benchmark_length"])])
    group_keys = _shown_keys(
        c, ["model", "pruner", "quant", "compat", "budget", *_EXTRA_KEYS], ("model", "pruner", "quant", "budget")
    )
    row_keys = [*group_keys, "precision"]
    picked = pick_runs(c, [*row_keys, "bench"])
    table, found = _interval_table(
        picked, row_keys, TIER_STATS,
        name="tiers",
        title="Precision per token against one precision at the same budget",
        caption=(
            "Score per benchmark and its 95 % bootstrap interval (samples resampled within tasks, 1000 resamples, "
            "seed 0) at each budget: one precision for every kept token (1x16, 2x8, 4x4: the tokens the budget buys "
            "at 16, 8 and 4 bits) and precision per token (`quant.tiers`: the pruner's best-scored kept tokens at "
            "the first tier's bits, and so on; the budget buys tokens at the tiers' mean bits). In nominal accounting the "
            "same budget is not the same bytes: each tier of a row keeps its own 16-bit remainder of a group, so a "
            "tiered cache holds more (runs.csv: kv_bytes)."
        ),
        key_titles={**_KEY_TITLES, "precision": "Precision"},
    )
    table.notes = [*_tier_verdicts(found, len(group_keys)), *_chosen_notes(picked)]
    return table


def _verdict(point: tuple[float, float, float], best: tuple[float, float, float]) -> str:
    """``point`` ``(score, low, high)`` against ``best``: beyond its interval above (or below: only when ``point``'s
    ``high`` is known), above it within the intervals, or not above it."""
    score, low, high = point
    best_score, best_low, best_high = best
    if not is_missing(low) and not is_missing(best_high) and low > best_high:
        return "beats it beyond the intervals"
    if score > best_score:
        return "scores above it, within the intervals"
    if not is_missing(high) and not is_missing(best_low) and high < best_low:
        return "falls below it beyond the intervals"
    return "does not score above it"


def _tier_verdicts(found: dict[tuple, tuple[float, float, float]], groups: int) -> list[str]:
    """Per row group and benchmark: each tiering against the best uniform point (the highest score)."""
    notes = []
    points = sorted({(key[:groups], bench) for key, bench in found})
    for group, bench in points:
        here = {key[groups]: value for (key, b), value in found.items() if key[:groups] == group and b == bench}
        uniform = {name: v for name, v in here.items() if not name.startswith("tiers ")}
        if not uniform:
            continue
        best_name, (best, _, best_high) = max(uniform.items(), key=lambda item: item[1][0])
        where = ", ".join(str(v) for v in group)
        for name, (score, low, _) in sorted(here.items()):
            if name in uniform:
                continue
            verdict = _verdict((score, low, math.nan), uniform[best_name])
            notes.append(f"{bench}, {where}: {name} ({score:.2f}) against the best uniform point {best_name} "
                         f"({best:.2f}): {verdict}.")
    return notes


QUANT_STATS = {"score": "score", "low": "95% low", "high": "95% high", "kib": "KV KiB"}


def quantizers(runs: pd.DataFrame) -> ReportTable | None:
    """Quantizers beyond the paper's (:data:`labels.PAPER_QUANTS`: e.g. ``kvquant``) beside the others run at the
    same budget: per benchmark, each run's score, its 95 % bootstrap interval and the KV bytes it held (mean per
    sample, KiB), rows per (model, pruner, budget, budget mode, bits, quantizer). With ``budget_mode=exact`` a
    budget is the same bytes for every quantizer (outliers, positions, scales counted). The notes compare, per
    budget and benchmark, each new quantizer with the best run of KIVI at that budget (any bits).

    Built when a run of a quantizer outside the paper's exists at a budget where another quantizer has a run; None
    otherwise."""

    if not len(runs):
        return None
    c = runs[runs["score"].notna() & runs["budget"].notna() & runs["quant"].notna() & one_precision(runs)].copy()
    # masks as Series: a list mask of an empty frame would select columns, not rows
    c = c[c["quant"].map(lambda q: labels.rotated_base(q) is None and q != "none").astype(bool)]
    group_keys_all = ["model", "pruner", "compat", "budget", *_EXTRA_KEYS]
    new_points = {cell_key(r, group_keys_all) for _, r in c[~c["quant"].isin(labels.PAPER_QUANTS)].iterrows()}
    if not new_points:
        return None
    c = c[pd.Series([cell_key(r, group_keys_all) in new_points for _, r in c.iterrows()], index=c.index, dtype=bool)]
    if c["quant"].nunique() < 2:
        return None
    c = c.assign(bench=[labels.benchmark_label(b, n) for b, n in zip(c["benchmark"], c["benchmark_length"])])
    group_keys = _shown_keys(c, group_keys_all, ("model", "pruner", "budget", "budget_mode"))
    row_keys = [*group_keys, "bits", "quant"]
    picked = pick_runs(c, [*row_keys, "bench"])
    table, found = _interval_table(
        picked, row_keys, QUANT_STATS,
        name="quantizers",
        title="Quantizers beyond the paper's against KIVI at the same budget",
        caption=(
            "Score per benchmark, its 95 % bootstrap interval (samples resampled within tasks, 1000 resamples, seed "
            "0) and the KV cache held (KiB, mean per sample, measured from the tensors) for each quantizer and "
            "precision at one budget. With `budget_mode=exact` every quantizer spends the same bytes (its scales, "
            "zeros, outliers and positions counted), so the bits trade precision against kept tokens."
        ),
        key_titles=_KEY_TITLES,
    )
    table.notes = [*_quantizer_verdicts(found, len(group_keys)), *_chosen_notes(picked)]
    return table


def _quantizer_verdicts(found: dict[tuple, tuple[float, float, float]], groups: int) -> list[str]:
    """Per budget (row group) and benchmark: each run of a quantizer beyond the paper's against the best KIVI run
    there (any bits). Keys are ``(*group, bits, quant)``."""
    notes = []
    for group, bench in sorted({(key[:groups], bench) for key, bench in found}):
        here = {key[groups:]: v for (key, b), v in found.items() if key[:groups] == group and b == bench}
        kivi = {bits: v for (bits, quant), v in here.items() if quant == "kivi"}
        if not kivi:
            continue
        best_bits, (best, _, best_high) = max(kivi.items(), key=lambda item: item[1][0])
        where = ", ".join(str(v) for v in group)
        for (bits, quant), (score, low, high) in sorted(here.items()):
            if quant in labels.PAPER_QUANTS:
                continue
            verdict = _verdict((score, low, high), kivi[best_bits])
            notes.append(f"{bench}, {where}: {quant} {int(bits)}-bit ({score:.2f}) against the best KIVI run, "
                         f"{int(best_bits)}-bit ({best:.2f}): {verdict}.")
    return notes


_KEY_TITLES = {
    "model": "Model",
    "benchmark": "Benchmark",
    "benchmark_length": "Length",
    "pruner": "Pruner",
    "quant": "Quantizer",
    "compat": "Compat",
    "budget": "Budget",
    "tokens": "Tokens",
    "bits": "Precision",
    "group_size": "Group",
    "budget_mode": "Budget mode",
    "layer_config": "Layers",
}


def build_tables(
    runs: pd.DataFrame, paper: PaperNumbers | None = None, throughput: pd.DataFrame | None = None
) -> dict[str, ReportTable | None]:
    """All tables by name (None where no run fits)."""
    return {
        "table1": table1(runs, paper),
        "table2": table2(runs, paper),
        "table3": table3(runs, paper),
        "table4": table4(throughput if throughput is not None else pd.DataFrame(), runs, paper),
        "compat_modes": compat_modes(runs),
        "rotation": rotation(runs),
        "tiers": tiers(runs),
        "quantizers": quantizers(runs),
    }
