"""The throughput benchmark's CSV files (Table 4's input): :func:`read_throughput`; format in docs/report.md."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

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


def read_throughput(paths: Iterable[str | os.PathLike[str]]) -> tuple[pd.DataFrame, list[str]]:
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
