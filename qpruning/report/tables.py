"""The paper's Tables 1-4 from collected runs, and their CSV / Markdown / LaTeX writers.

Each table function takes the kept complete runs (``Collection.runs``) and returns a :class:`ReportTable`, or
``None`` when no run fits it (the index then says "no runs yet"). A :class:`ReportTable` keeps its cells in long
form (one row per cell: the configuration, our value, the samples behind it, the run folder, and the paper's
value where our configuration matches a published cell), and renders them as the paper's wide layout.

Missing cells are NaN in the frames, empty in the CSV files and "–" in Markdown / LaTeX: never 0.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import labels
from .labels import is_missing
from .paper import PaperNumbers

logger = logging.getLogger(__name__)

MISSING_MD = "–"
MISSING_TEX = "--"
SOURCE_OURS = "ours"
SOURCE_PAPER = "paper"
SOURCE_DIFF = "Δ (ours − paper)"
TABLE1_TOKENS: tuple[int, ...] = (128, 512, 2048)
TABLE1_BITS: tuple[int, ...] = (16, 8, 4, 2)


def _norm(value: Any) -> Any:
    """Cell-key form of a value: None for missing, float for numbers (512 == 512.0), else as is."""
    if is_missing(value):
        return None
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return float(value)
    return value


def _key(row: Any, keys: Sequence[str]) -> tuple:
    return tuple(_norm(row[k]) for k in keys)


def _sorted_unique(tuples: Iterable[tuple], keys: Sequence[str]) -> list[tuple]:
    unique = list(dict.fromkeys(tuples))
    return sorted(unique, key=lambda t: tuple(labels.sort_value(k, v) for k, v in zip(keys, t)))


@dataclass
class ReportTable:
    """One table: long-form cells and how to lay them out.

    Attributes:
        name: file stem (``table1``).
        title: one line (``Table 1: ...``).
        caption: the configurations behind the cells, in words.
        cells: one row per cell: ``row_keys`` + ``col_keys`` columns, ``value``, ``samples``, ``n_runs`` (complete
            runs with that configuration, duplicates included), ``run_path``, ``paper`` (NaN where no published
            cell matches) and ``diff`` (ours - paper).
        row_keys / col_keys: the fields that make rows and columns.
        row_order / col_order: every row / column to show, as tuples of normalized key values.
        label_fn: display form of a key value (default :func:`labels.label`).
        key_titles: header of each row key column.
        col_prefix: text before a column key's label (``Token=``).
        highlight_within: row keys that delimit blocks; per column and block the best value is bold and, with
            ``underline``, the second best underlined (like the paper). None: no highlight.
        info_cols: columns that are neither highlighted nor counted as missing (e.g. Table 2's token count).
        decimals / col_decimals: digits shown in Markdown and LaTeX (CSV keeps full precision).
        signed_rows: ``(key, value)``: rows whose ``key`` equals ``value`` are printed with a sign (differences).
        missing: the empty cells of the layout, and published cells that no run matches, one line each.
        notes: anything a reader should know (cells chosen among several runs...).
    """

    name: str
    title: str
    caption: str
    cells: pd.DataFrame
    row_keys: list[str]
    col_keys: list[str]
    row_order: list[tuple]
    col_order: list[tuple]
    label_fn: Callable[[str, Any], str] = labels.label
    key_titles: dict[str, str] = field(default_factory=dict)
    col_prefix: dict[str, str] = field(default_factory=dict)
    highlight_within: tuple[str, ...] | None = None
    underline: bool = True
    higher_is_better: bool = True
    info_cols: set[tuple] = field(default_factory=set)
    decimals: int = 1
    col_decimals: dict[tuple, int] = field(default_factory=dict)
    signed_rows: tuple[str, Any] | None = None
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # ----- lookups
    def lookup(self, field_name: str = "value") -> dict[tuple[tuple, tuple], Any]:
        """``{(row tuple, column tuple): cells[field_name]}``."""
        out: dict[tuple[tuple, tuple], Any] = {}
        if field_name not in self.cells.columns:
            return out
        for _, row in self.cells.iterrows():
            out[(_key(row, self.row_keys), _key(row, self.col_keys))] = row[field_name]
        return out

    def wide(self, field_name: str = "value") -> pd.DataFrame:
        """The wide layout of one field (NaN where a cell is missing), raw key values in a MultiIndex."""
        cells = self.lookup(field_name)
        data = [[cells.get((r, c), math.nan) for c in self.col_order] for r in self.row_order]
        index = pd.MultiIndex.from_tuples(self.row_order, names=self.row_keys)
        columns = pd.MultiIndex.from_tuples(self.col_order, names=self.col_keys)
        frame = pd.DataFrame(data, index=index, columns=columns)
        return frame.apply(pd.to_numeric, errors="coerce")

    @property
    def n_layout_cells(self) -> int:
        """Cells of the layout that count (info columns excluded)."""
        return len(self.row_order) * len([c for c in self.col_order if c not in self.info_cols])

    @property
    def n_filled(self) -> int:
        """Cells of the layout that hold a value (info columns excluded)."""
        values = self.lookup("value")
        return sum(
            1
            for r in self.row_order
            for c in self.col_order
            if c not in self.info_cols and not is_missing(values.get((r, c)))
        )

    def has_paper(self) -> bool:
        return "paper" in self.cells.columns and bool(self.cells["paper"].notna().any())

    # ----- highlighting
    def marks(self) -> dict[tuple[tuple, tuple], str]:
        """``{(row, col): "best" | "second"}``, per column within each block of ``highlight_within``.

        Values are compared as shown (rounded to the column's decimals); ties share a rank (dense ranking); a
        block needs at least two values in a column to be marked.
        """
        if self.highlight_within is None:
            return {}
        values = self.lookup("value")
        block_positions = [self.row_keys.index(k) for k in self.highlight_within]
        blocks: dict[tuple, list[tuple]] = {}
        for r in self.row_order:
            blocks.setdefault(tuple(r[i] for i in block_positions), []).append(r)
        marks: dict[tuple[tuple, tuple], str] = {}
        for rows in blocks.values():
            for c in self.col_order:
                if c in self.info_cols:
                    continue
                # ranked on the values as shown, so that two cells printed alike get the same mark
                digits = self.col_decimals.get(c, self.decimals)
                present = {
                    r: round(float(values[(r, c)]), digits)
                    for r in rows
                    if not is_missing(values.get((r, c)))
                }
                if len(present) < 2:
                    continue
                distinct = sorted(set(present.values()), reverse=self.higher_is_better)
                for r, v in present.items():
                    rank = distinct.index(v)
                    if rank == 0:
                        marks[(r, c)] = "best"
                    elif rank == 1 and self.underline and len(distinct) > 1:
                        marks[(r, c)] = "second"
        return marks

    # ----- derived tables
    def comparison(self) -> ReportTable | None:
        """Rows that match published cells, as three rows each: ours, the paper's, and the difference.

        None when no cell matches the paper.
        """
        if not self.has_paper():
            return None
        matched = self.cells[self.cells["paper"].notna()]
        rows_with_paper = {_key(r, self.row_keys) for _, r in matched.iterrows()}
        parts = []
        for source, column in ((SOURCE_OURS, "value"), (SOURCE_PAPER, "paper"), (SOURCE_DIFF, "diff")):
            part = self.cells[
                [_key(r, self.row_keys) in rows_with_paper for _, r in self.cells.iterrows()]
            ].copy()
            part["value"] = part[column]
            part["source"] = source
            if source != SOURCE_OURS:
                part["samples"] = math.nan
            parts.append(part)
        cells = pd.concat(parts, ignore_index=True)
        cells = cells[cells["value"].notna() | (cells["source"] == SOURCE_OURS)]
        row_order = [
            (*r, s)
            for r in self.row_order
            if r in rows_with_paper
            for s in (SOURCE_OURS, SOURCE_PAPER, SOURCE_DIFF)
        ]
        return replace(
            self,
            name=f"{self.name}_vs_paper",
            title=f"{self.title}: ours, the paper's, and the difference",
            caption=re.sub(r"\s*Bold:[^.]*\.(\s*[Uu]nderlined:[^.]*\.)?", "", self.caption)
            + " Rows: our value, the paper's published value, and ours minus the paper's; "
            "only rows with at least one matching published cell are shown.",
            cells=cells.drop(columns=["paper", "diff"], errors="ignore"),
            row_keys=[*self.row_keys, "source"],
            row_order=row_order,
            highlight_within=None,
            signed_rows=("source", SOURCE_DIFF),
            key_titles={**self.key_titles, "source": ""},
            missing=[],
            notes=[],
        )

    def samples_table(self) -> ReportTable:
        """The same layout with the number of samples behind each cell."""
        cells = self.cells.copy()
        cells["value"] = cells["samples"]
        return replace(
            self,
            name=f"{self.name}_samples",
            title=f"{self.title}: samples per cell",
            cells=cells.drop(columns=["paper", "diff"], errors="ignore"),
            highlight_within=None,
            decimals=0,
            col_decimals={},
            info_cols=set(),
        )

    # ----- formatting
    def header_label(self, col: tuple, level: int) -> str:
        key = self.col_keys[level]
        value = col[level]
        if value is None:
            return ""
        return f"{self.col_prefix.get(key, '')}{self.label_fn(key, value)}"

    def column_label(self, col: tuple) -> str:
        return " ".join(p for p in (self.header_label(col, i) for i in range(len(col))) if p)

    def row_labels(self, row: tuple) -> list[str]:
        return [self.label_fn(k, v) if v is not None else MISSING_MD for k, v in zip(self.row_keys, row)]

    def format_value(self, row: tuple, col: tuple, value: Any) -> str | None:
        """The number as shown (None for a missing cell)."""
        if is_missing(value):
            return None
        digits = self.col_decimals.get(col, self.decimals)
        signed = (
            self.signed_rows is not None
            and row[self.row_keys.index(self.signed_rows[0])] == self.signed_rows[1]
        )
        if signed:
            rounded = round(float(value), digits)
            text = f"{0.0:.{digits}f}" if rounded == 0 else f"{rounded:+.{digits}f}"
            return text.replace("-", "−")
        return f"{float(value):.{digits}f}"


# ----------------------------------------------------------------------------------------------- writers
def _escape_md(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(table: ReportTable) -> str:
    """A GitHub-flavoured Markdown table; best values in bold, second best underlined (``<ins>``), missing "–"."""
    values = table.lookup("value")
    marks = table.marks()
    headers = [table.key_titles.get(k, k) for k in table.row_keys] + [
        table.column_label(c) for c in table.col_order
    ]
    lines = [
        "| " + " | ".join(_escape_md(h) for h in headers) + " |",
        "|" + "|".join([":---"] * len(table.row_keys) + ["---:"] * len(table.col_order)) + "|",
    ]
    previous: list[str] | None = None
    for row in table.row_order:
        row_text = table.row_labels(row)
        shown = list(row_text)
        if previous is not None:
            for i in range(len(row_text) - 1):
                if row_text[: i + 1] == previous[: i + 1]:
                    shown[i] = ""
        previous = row_text
        cells = []
        for col in table.col_order:
            text = table.format_value(row, col, values.get((row, col)))
            if text is None:
                cells.append(MISSING_MD)
                continue
            mark = marks.get((row, col))
            cells.append(
                f"**{text}**" if mark == "best" else f"<ins>{text}</ins>" if mark == "second" else text
            )
        lines.append("| " + " | ".join(_escape_md(x) for x in shown + cells) + " |")
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "−": "$-$",
    "Δ": r"$\Delta$",
}


def escape_latex(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: ReportTable) -> str:
    """A booktabs ``table`` environment: grouped column headers, a rule between row blocks, bold / underline."""
    values = table.lookup("value")
    marks = table.marks()
    n_rows = len(table.row_keys)
    spec = "l" * n_rows + "r" * len(table.col_order)
    out = [
        r"% generated by python -m qpruning.report; needs \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
    ]
    levels = len(table.col_keys)
    for level in range(levels - 1):
        groups: list[tuple[str, int]] = []
        for col in table.col_order:
            text = " ".join(
                table.header_label(col, i) for i in range(level + 1) if table.header_label(col, i)
            )
            if groups and groups[-1][0] == text:
                groups[-1] = (text, groups[-1][1] + 1)
            else:
                groups.append((text, 1))
        cells = [""] * n_rows + [
            rf"\multicolumn{{{span}}}{{c}}{{{escape_latex(t.split(' ')[-1] if level else t)}}}"
            if span > 1
            else escape_latex(t)
            for t, span in groups
        ]
        out.append(" & ".join(cells) + r" \\")
        rules, start = [], n_rows + 1
        for text, span in groups:
            if span > 1 and text:
                rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        if rules:
            out.append(" ".join(rules))
    header = [escape_latex(table.key_titles.get(k, k)) for k in table.row_keys]
    header += [escape_latex(table.header_label(c, levels - 1)) for c in table.col_order]
    out.append(" & ".join(header) + r" \\")
    out.append(r"\midrule")
    block_positions = (
        [table.row_keys.index(k) for k in table.highlight_within] if table.highlight_within else [0]
    )
    previous_block = None
    previous: list[str] | None = None
    for row in table.row_order:
        block = tuple(row[i] for i in block_positions) if n_rows > 1 else None
        if previous_block is not None and block != previous_block:
            out.append(r"\midrule")
            previous = None
        previous_block = block
        row_text = table.row_labels(row)
        shown = list(row_text)
        if previous is not None:
            for i in range(len(row_text) - 1):
                if row_text[: i + 1] == previous[: i + 1]:
                    shown[i] = ""
        previous = row_text
        cells = [escape_latex(x) for x in shown]
        for col in table.col_order:
            text = table.format_value(row, col, values.get((row, col)))
            if text is None:
                cells.append(MISSING_TEX)
                continue
            text = escape_latex(text)
            mark = marks.get((row, col))
            cells.append(
                rf"\textbf{{{text}}}"
                if mark == "best"
                else rf"\underline{{{text}}}"
                if mark == "second"
                else text
            )
        out.append(" & ".join(cells) + r" \\")
    out += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{escape_latex(table.title + '. ' + table.caption)}}}",
        rf"\label{{tab:{table.name.replace('_', '-')}}}",
        r"\end{table}",
    ]
    return "\n".join(out) + "\n"


def to_csv_frame(table: ReportTable) -> pd.DataFrame:
    """The wide layout with display labels in the row columns, one header row, full-precision numbers."""
    values = table.lookup("value")
    records = []
    for row in table.row_order:
        record: dict[str, Any] = {}
        for key, text in zip(table.row_keys, table.row_labels(row)):
            record[table.key_titles.get(key, key) or key] = text
        for col in table.col_order:
            value = values.get((row, col))
            record[table.column_label(col)] = math.nan if is_missing(value) else float(value)
        records.append(record)
    return pd.DataFrame.from_records(records)


def write_table(table: ReportTable, out_dir: str | Path) -> dict[str, Path]:
    """Write ``NAME.csv``, ``NAME.md``, ``NAME.tex`` and ``NAME_cells.csv`` (long form with provenance).

    Returns the written paths by kind (``csv``, ``md``, ``tex``, ``cells``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out_dir / f"{table.name}.csv",
        "md": out_dir / f"{table.name}.md",
        "tex": out_dir / f"{table.name}.tex",
        "cells": out_dir / f"{table.name}_cells.csv",
    }
    to_csv_frame(table).to_csv(paths["csv"], index=False, na_rep="")
    paths["md"].write_text(f"**{table.title}.** {table.caption}\n\n{to_markdown(table)}", encoding="utf-8")
    paths["tex"].write_text(to_latex(table), encoding="utf-8")
    table.cells.to_csv(paths["cells"], index=False, na_rep="")
    return paths


# ----------------------------------------------------------------------------------------------- selection
def pick_runs(candidates: pd.DataFrame, cell_keys: Sequence[str]) -> pd.DataFrame:
    """One run per cell among ``candidates``, by preference, with ``n_candidates`` (runs that fitted the cell).

    Preference: the full benchmark over a quick variant (``niah_small``), the paper's quantizer for the pruner (KIVI; FlexGen for Ada-KV and HeadKV) or no quantization,
    group size 64, nominal budget accounting, then the most recent run. 16-bit runs with different ``quant``
    labels are the same computation, so this is where they are merged.
    """
    if candidates.empty:
        return candidates.assign(n_candidates=pd.Series(dtype="int64"))
    c = candidates.copy()
    c["_cell"] = [_key(r, cell_keys) for _, r in c.iterrows()]
    c["_pref_quant"] = [
        1 if (not is_missing(b) and int(b) == 16) or q == labels.paper_quant(p) else 0
        for b, q, p in zip(c["bits"], c["quant"], c["pruner"])
    ]
    c["_pref_group"] = [
        1 if not is_missing(g) and int(g) == labels.DEFAULT_GROUP_SIZE else 0 for g in c["group_size"]
    ]
    c["_pref_mode"] = [1 if is_missing(m) or m == "nominal" else 0 for m in c["budget_mode"]]
    c["_pref_full"] = [0 if labels.is_reduced(b) else 1 for b in c["benchmark"]]
    c = c.sort_values(
        ["_pref_full", "_pref_quant", "_pref_group", "_pref_mode", "mtime", "run_path"],
        ascending=[False, False, False, False, False, True],
    )
    counts = c["_cell"].value_counts()
    picked = c.drop_duplicates(subset="_cell", keep="first").copy()
    picked["n_candidates"] = [int(counts[k]) for k in picked["_cell"]]
    return picked.drop(columns=["_cell", "_pref_full", "_pref_quant", "_pref_group", "_pref_mode"])


def _quant_ok(runs: pd.DataFrame, quant: str | None = None) -> pd.Series:
    """16-bit runs, or quantized runs with ``quant`` (default: the paper's quantizer for the run's pruner)."""
    return pd.Series(
        [
            (not is_missing(b) and int(b) == 16) or q == (quant or labels.paper_quant(p))
            for b, q, p in zip(runs["bits"], runs["quant"], runs["pruner"])
        ],
        index=runs.index,
        dtype=bool,
    )


def _plain(runs: pd.DataFrame) -> pd.Series:
    """Runs without a layer-wise configuration."""
    return runs["layer_config"].isna()


def _chosen_notes(picked: pd.DataFrame) -> list[str]:
    notes = []
    several = picked[picked["n_candidates"] > 1] if "n_candidates" in picked else picked.iloc[0:0]
    if len(several):
        notes.append(
            f"{len(several)} cell(s) had several fitting runs (e.g. 16-bit runs under different quantizer names); "
            "one was chosen by preference: the paper's quantizer, group size 64, nominal budget, most recent."
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


def _holes(table: ReportTable) -> list[str]:
    values = table.lookup("value")
    out = []
    for r in table.row_order:
        for c in table.col_order:
            if c in table.info_cols or not is_missing(values.get((r, c))):
                continue
            where = " / ".join(table.row_labels(r))
            out.append(f"{where} / {table.column_label(c)}: no run")
    return out


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
            & _plain(runs)
        )
        if len(runs)
        else pd.Series(dtype=bool)
    )
    if not len(runs) or not mask.any():
        return None
    cands = runs[mask]
    cands = cands[
        _quant_ok(cands) & ((cands["bits"] == 16) | (cands["group_size"] == labels.DEFAULT_GROUP_SIZE))
    ]
    if cands.empty:
        return None
    row_keys, col_keys = ["model", "benchmark", "pruner"], ["tokens", "bits"]
    picked = pick_runs(cands, row_keys + col_keys)
    published: dict[tuple, float] = {}
    if paper:
        for _, p in paper.get("table1").iterrows():
            published[(p["model"], p["benchmark"], p["pruner"], float(p["tokens"]), float(p["bits"]))] = p[
                "value"
            ]
    records = []
    for _, run in picked.iterrows():
        cell = {k: _norm(run[k]) for k in row_keys + col_keys}
        family = None if labels.is_reduced(run["benchmark"]) else run["family"]
        ref = published.get((run["model"], family, run["pruner"], float(run["tokens"]), float(run["bits"])))
        records.append({**cell, **_run_cell(run, run["score"], ref)})
    cells = _cells_frame(records, row_keys + col_keys)
    rows = _sorted_unique((_key(r, row_keys) for _, r in cells.iterrows()), row_keys)
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
    table.missing = _holes(table)
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
    base = runs[runs["budget"].notna() & runs["pruner"].isin(list(pruners)) & _plain(runs)]
    base = base[_quant_ok(base)] if len(base) else base
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
            published[(*key, column)] = p["value"]
            published[(*key, "tokens")] = float(p["tokens"])
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
    rows = _sorted_unique((_key(r, row_keys) for _, r in cells.iterrows()), row_keys)
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
    table.missing = _holes(table)
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
        & _plain(runs)
    ]
    row_keys, col_keys = ["model", "benchmark", "pruner", "tokens", "bits"], ["group_size"]
    if cands.empty:
        return None
    non_default = {
        _key(r, row_keys) for _, r in cands.iterrows() if int(r["group_size"]) != labels.DEFAULT_GROUP_SIZE
    }
    cands = cands[[_key(r, row_keys) in non_default for _, r in cands.iterrows()]]
    if cands.empty:
        return None
    picked = pick_runs(cands, row_keys + col_keys)
    published: dict[tuple, float] = {}
    if paper:
        for _, p in paper.get("table3").iterrows():
            key = (
                p["model"],
                p["benchmark"],
                p["pruner"],
                float(p["tokens"]),
                float(p["bits"]),
                float(p["group_size"]),
            )
            published[key] = p["value"]
    records = []
    for _, run in picked.iterrows():
        cell = {k: _norm(run[k]) for k in row_keys + col_keys}
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
        row_order=_sorted_unique((_key(r, row_keys) for _, r in cells.iterrows()), row_keys),
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
    table.missing = _holes(table)
    table.notes = _chosen_notes(picked)
    return table


# ----------------------------------------------------------------------------------------------- Table 4
THROUGHPUT_COLUMNS: tuple[str, ...] = (
    "model",
    "tokens",
    "bits",
    "batch",
    "tokens_per_s",
    "kv_bytes_per_item",
    "device",
    "command",
    "date",
)
"""Required columns of a throughput CSV (see docs/report.md); optional: pruner, quant, group_size, repeats."""


def read_throughput(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """Concatenate throughput benchmark CSV files; files lacking required columns are skipped and reported.

    Returns the rows (with ``source_file``) and a list of problems. Missing ``pruner`` / ``quant`` default to
    the paper's Table 4 setting (SnapKV, KIVI; no quantizer at 16 bits).
    """
    frames, problems = [], []
    for path in paths:
        path = Path(path)
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError) as error:
            problems.append(f"{path}: unreadable ({error})")
            continue
        absent = [c for c in THROUGHPUT_COLUMNS if c not in df.columns]
        if absent:
            problems.append(f"{path}: lacks the columns {absent}; skipped")
            continue
        df["source_file"] = str(path)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*THROUGHPUT_COLUMNS, "pruner", "quant", "source_file"]), problems
    df = pd.concat(frames, ignore_index=True)
    if "pruner" not in df.columns:
        df["pruner"] = "snapkv"
    if "quant" not in df.columns:
        df["quant"] = None
    df["pruner"] = df["pruner"].fillna("snapkv")
    df["quant"] = [
        None if int(b) == 16 else (q if isinstance(q, str) and q else "kivi")
        for b, q in zip(df["bits"], df["quant"])
    ]
    for column in ("tokens", "bits", "batch", "tokens_per_s", "kv_bytes_per_item"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    return df, problems


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
    t = throughput.copy()
    t["_date"] = pd.to_datetime(t["date"], errors="coerce", utc=True)
    keys = ["model", "device", "tokens", "bits", "batch", "pruner", "quant"]
    t["_cell"] = [_key(r, keys) for _, r in t.iterrows()]
    t["_order"] = range(len(t))
    t = t.sort_values(["_date", "_order"], ascending=[False, False], na_position="last")
    repeats = t["_cell"].value_counts()
    t = t.drop_duplicates(subset="_cell", keep="first")
    notes = []
    if int((repeats > 1).sum()):
        notes.append(
            f"{int((repeats > 1).sum())} throughput measurement(s) were repeated; the latest date is shown."
        )
    row_keys, col_keys = ["model", "pruner", "device", "tokens", "bits"], ["metric", "batch"]
    published: dict[tuple, float] = {}
    if paper:
        for _, p in paper.get("table4").iterrows():
            metric = {"kv_memory_per_item": "kv_mb_per_item"}.get(p["metric"], p["metric"])
            batch = None if is_missing(p["batch"]) else float(p["batch"])
            published[(p["model"], p["pruner"], float(p["tokens"]), float(p["bits"]), metric, batch)] = p[
                "value"
            ]
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
    cells = _cells_frame(records, row_keys + col_keys).drop_duplicates(
        subset=row_keys + col_keys, keep="first"
    )
    accuracy = []
    if runs is not None and len(runs):
        for row in {tuple(r) for r in cells[row_keys].itertuples(index=False)}:
            model, pruner, _device, tokens, bits = row
            for family, metric in (("longbench", "longbench_avg"), ("niah", "niah_avg")):
                quant = None if int(bits) == 16 else labels.paper_quant(pruner)
                match = runs[
                    (runs["model"] == model)
                    & (runs["pruner"] == pruner)
                    & (runs["benchmark"] == family)
                    & (runs["tokens"] == tokens)
                    & (runs["bits"] == bits)
                    & _plain(runs)
                ]
                if quant is not None:
                    match = match[
                        (match["quant"] == quant) & (match["group_size"] == labels.DEFAULT_GROUP_SIZE)
                    ]
                if match.empty:
                    continue
                run = pick_runs(match, ["model"]).iloc[0]
                ref = published.get((model, pruner, tokens, bits, metric, None), math.nan)
                accuracy.append(
                    {
                        **dict(zip(row_keys, row)),
                        "metric": metric,
                        "batch": None,
                        **_run_cell(run, run["score"], ref),
                    }
                )
    if accuracy:
        cells = pd.concat([cells, _cells_frame(accuracy, row_keys + col_keys)], ignore_index=True)
        cells["diff"] = cells["value"] - cells["paper"]
    batches = sorted({b for b in cells["batch"].dropna()})
    col_order = [("tokens_per_s", b) for b in batches] + [("kv_mb_per_item", None)]
    col_order += [(m, None) for m in ("longbench_avg", "niah_avg") if (cells["metric"] == m).any()]

    def label_fn(key: str, value: Any) -> str:
        if key == "metric":
            return {
                "tokens_per_s": "Throughput (tokens/s)",
                "kv_mb_per_item": "KV cache (MB / batch item)",
                "longbench_avg": "LongBench avg",
                "niah_avg": "NIAH avg",
            }.get(value, str(value))
        if key == "batch":
            return f"batch={int(value)}"
        return labels.label(key, value)

    rows = _sorted_unique((_key(r, row_keys) for _, r in cells.iterrows()), row_keys)
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
        label_fn=label_fn,
        key_titles={
            "model": "Model",
            "pruner": "Pruner",
            "device": "Device",
            "tokens": "Tokens",
            "bits": "Bits",
        },
        col_decimals={c: 2 for c in col_order if c[0] in ("longbench_avg", "niah_avg")},
    )
    table.missing = _holes(table)
    table.notes = notes + [
        "Throughput cells: 'samples' is the number of timed repeats of the measurement (1 if not recorded)."
    ]
    return table


def build_tables(
    runs: pd.DataFrame, paper: PaperNumbers | None = None, throughput: pd.DataFrame | None = None
) -> dict[str, ReportTable | None]:
    """All tables by name (None where no run fits)."""
    return {
        "table1": table1(runs, paper),
        "table2": table2(runs, paper),
        "table3": table3(runs, paper),
        "table4": table4(throughput if throughput is not None else pd.DataFrame(), runs, paper),
    }
