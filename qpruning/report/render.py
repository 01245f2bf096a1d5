"""The table model and its writers: :class:`ReportTable`, Markdown, LaTeX and CSV.

A :class:`ReportTable` keeps its cells in long form (one row per cell: the configuration, our value, the samples
behind it, the run folder, and the paper's value where our configuration matches a published cell), and renders
them as the paper's wide layout. The table functions that fill it are in ``tables.py``.

Missing cells are NaN in the frames, empty in the CSV files and "–" in Markdown / LaTeX: never 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import labels
from .labels import is_missing
from .selection import cell_key

MISSING_MD = "–"
MISSING_TEX = "--"
SOURCE_OURS = "ours"
SOURCE_PAPER = "paper"
SOURCE_DIFF = "Δ (ours − paper)"


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
            out[(cell_key(row, self.row_keys), cell_key(row, self.col_keys))] = row[field_name]
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

    def holes(self) -> list[str]:
        """The empty cells of the layout (info columns excluded), one line each: ``row / column: no run``."""
        values = self.lookup("value")
        out = []
        for r in self.row_order:
            for c in self.col_order:
                if c in self.info_cols or not is_missing(values.get((r, c))):
                    continue
                where = " / ".join(self.row_labels(r))
                out.append(f"{where} / {self.column_label(c)}: no run")
        return out

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
        rows_with_paper = {cell_key(r, self.row_keys) for _, r in matched.iterrows()}
        parts = []
        for source, column in ((SOURCE_OURS, "value"), (SOURCE_PAPER, "paper"), (SOURCE_DIFF, "diff")):
            part = self.cells[
                [cell_key(r, self.row_keys) in rows_with_paper for _, r in self.cells.iterrows()]
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
def shown_rows(table: ReportTable, blocks: bool = False) -> Iterator[tuple[tuple, list[str], bool]]:
    """Each row of the layout with its labels as printed, and whether it starts a new block.

    A row label is left blank where it and every label left of it repeat the row above (the last key is always
    printed). With ``blocks``, rows are grouped by the keys of ``highlight_within`` (the first key without it);
    the first row of each block after the first starts it anew, with every label printed.
    """
    positions = [table.row_keys.index(k) for k in table.highlight_within] if table.highlight_within else [0]
    previous_block: tuple | None = None
    previous: list[str] | None = None
    for row in table.row_order:
        starts_block = False
        if blocks:
            block = tuple(row[i] for i in positions) if len(table.row_keys) > 1 else None
            if previous_block is not None and block != previous_block:
                starts_block = True
                previous = None
            previous_block = block
        row_text = table.row_labels(row)
        shown = list(row_text)
        if previous is not None:
            for i in range(len(row_text) - 1):
                if row_text[: i + 1] == previous[: i + 1]:
                    shown[i] = ""
        previous = row_text
        yield row, shown, starts_block


def _value_cells(
    table: ReportTable,
    row: tuple,
    values: dict[tuple[tuple, tuple], Any],
    marks: dict[tuple[tuple, tuple], str],
    missing: str,
    emphasize: Callable[[str, str | None], str],
) -> list[str]:
    """The value cells of one row as printed: ``missing`` for a hole, else ``emphasize(text, mark)``."""
    cells = []
    for col in table.col_order:
        text = table.format_value(row, col, values.get((row, col)))
        cells.append(missing if text is None else emphasize(text, marks.get((row, col))))
    return cells


def _escape_md(text: str) -> str:
    return text.replace("|", "\\|")


def _emphasize_md(text: str, mark: str | None) -> str:
    return f"**{text}**" if mark == "best" else f"<ins>{text}</ins>" if mark == "second" else text


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
    for row, shown, _ in shown_rows(table):
        cells = _value_cells(table, row, values, marks, MISSING_MD, _emphasize_md)
        lines.append("| " + " | ".join(_escape_md(x) for x in shown + cells) + " |")
    return "\n".join(lines) + "\n"


def _md_text(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def frame_markdown(frame: pd.DataFrame, digits: int = 1) -> str:
    """A small DataFrame as a Markdown table (missing values shown as "–"; whole floats without decimals)."""
    if frame.empty:
        return "_none_\n"
    head = "| " + " | ".join(_md_text(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [head, rule]
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            if is_missing(value):
                cells.append(MISSING_MD)
            elif isinstance(value, float):
                cells.append(f"{value:.{digits}f}" if not value.is_integer() else str(int(value)))
            else:
                cells.append(_md_text(value))
        lines.append("| " + " | ".join(cells) + " |")
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


def _emphasize_tex(text: str, mark: str | None) -> str:
    text = escape_latex(text)
    return rf"\textbf{{{text}}}" if mark == "best" else rf"\underline{{{text}}}" if mark == "second" else text


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
    for row, shown, starts_block in shown_rows(table, blocks=True):
        if starts_block:
            out.append(r"\midrule")
        cells = [escape_latex(x) for x in shown]
        cells += _value_cells(table, row, values, marks, MISSING_TEX, _emphasize_tex)
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
            value: Any = values.get((row, col))
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
