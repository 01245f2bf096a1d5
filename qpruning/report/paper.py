"""The paper's published numbers (``results/paper/*.csv``), loaded as typed pandas tables.

The CSV files are typed from the paper's text (see ``results/paper/README.md``): one row per published cell, in
our names (``model=llama3_8b_instruct``, ``pruner=snapkv``, ``bits=4``...). Tables look cells up here to show
ours, the paper's and the difference side by side.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

PAPER_FILES: tuple[str, ...] = ("table1", "table2", "table3", "table4", "text")
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "table1": ("model", "benchmark", "pruner", "quant", "tokens", "bits", "value"),
    "table2": (
        "model",
        "benchmark",
        "benchmark_length",
        "pruner",
        "budget",
        "tokens",
        "bits",
        "category",
        "value",
    ),
    "table3": ("model", "benchmark", "pruner", "quant", "tokens", "bits", "group_size", "value"),
    "table4": ("model", "pruner", "tokens", "bits", "batch", "metric", "value", "unit"),
    "text": ("key", "kind", "description", "value", "unit", "source"),
}
_NUMERIC = ("tokens", "bits", "group_size", "budget", "benchmark_length", "batch", "value")

# The full 16-bit KV cache that the paper's budgets refer to (Appendix B), in tokens.
PAPER_FULL_CACHE_TOKENS: dict[tuple[str, str], int] = {
    ("llama3_8b_instruct", "longbench"): 8192,
    ("llama3_8b_instruct", "niah"): 8192,
    ("mistral_7b_instruct_v02", "longbench"): 16384,
    ("mistral_7b_instruct_v02", "niah"): 32768,
}


def default_paper_dir() -> Path | None:
    """``results/paper`` of this checkout, if it exists."""
    candidate = Path(__file__).resolve().parents[2] / "results" / "paper"
    return candidate if candidate.is_dir() else None


@dataclass
class PaperNumbers:
    """The typed tables: ``tables["table1"]`` ... ``tables["text"]`` (empty frames for absent files)."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    directory: Path | None = None

    def get(self, name: str) -> pd.DataFrame:
        """One table (an empty frame with the required columns when the file was absent)."""
        if name in self.tables:
            return self.tables[name]
        return pd.DataFrame({c: pd.Series(dtype="object") for c in REQUIRED_COLUMNS.get(name, ("value",))})

    def __bool__(self) -> bool:
        return any(len(df) for df in self.tables.values())


def load_paper(directory: str | os.PathLike[str] | None = None) -> PaperNumbers:
    """Read ``table1.csv`` ... ``text.csv`` from ``directory`` (default: :func:`default_paper_dir`).

    Missing files are skipped with a warning; a file without its required columns raises ``ValueError``.
    """
    folder = Path(directory) if directory is not None else default_paper_dir()
    if folder is None or not folder.is_dir():
        logger.warning("no paper numbers found (%s); tables show ours only", folder)
        return PaperNumbers(directory=folder)
    tables: dict[str, pd.DataFrame] = {}
    for name in PAPER_FILES:
        path = folder / f"{name}.csv"
        if not path.is_file():
            logger.warning("%s is missing; its paper cells are not compared", path)
            continue
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in REQUIRED_COLUMNS[name] if c not in df.columns]
        if missing:
            raise ValueError(
                f"{path} lacks the columns {missing}; expected at least {REQUIRED_COLUMNS[name]}"
            )
        for column in df.columns:
            if column in _NUMERIC:
                df[column] = pd.to_numeric(df[column].replace("", None), errors="coerce")
            else:
                df[column] = df[column].replace("", None)
        tables[name] = df
    return PaperNumbers(tables=tables, directory=folder)


def paper_budget_points(paper: PaperNumbers, model: str, benchmark: str, pruner: str) -> pd.DataFrame:
    """Table 1 cells of ``(model, benchmark, pruner)`` placed at the paper's budget (tokens x bits / 16 / full cache).

    Returns columns ``budget``, ``bits``, ``tokens``, ``value`` (empty when the paper has no such cells or the
    full cache size of the model is unknown). Used to overlay the paper's points on Figure 2.
    """
    full = PAPER_FULL_CACHE_TOKENS.get((model, benchmark))
    t1 = paper.get("table1")
    if full is None or t1.empty:
        return pd.DataFrame(columns=["budget", "bits", "tokens", "value"])
    rows = t1[(t1["model"] == model) & (t1["benchmark"] == benchmark) & (t1["pruner"] == pruner)]
    out = pd.DataFrame(
        {
            "budget": rows["tokens"].astype(float) * rows["bits"].astype(float) / 16.0 / full,
            "bits": rows["bits"].astype(int),
            "tokens": rows["tokens"].astype(int),
            "value": rows["value"].astype(float),
        }
    )
    return out.reset_index(drop=True)
