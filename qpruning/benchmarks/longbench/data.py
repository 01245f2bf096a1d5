"""LongBench data: the official jsonl files, from a local folder, the qpruning cache, or the hub.

Every dataset is one jsonl file, ``<name>.jsonl`` (LongBench) or ``<name>_e.jsonl`` (LongBench-E), one object
per line with the fields ``input, context, answers, length, dataset, language, all_classes, _id``. They are
the members ``data/<file>`` of ``data.zip`` in the hub dataset ``THUDM/LongBench``.

Where data is looked for, in order:

1. ``data_dir`` (``benchmark.data_dir=DIR``): ``DIR/<file>`` or ``DIR/data/<file>``; when it is given, nothing
   else is tried, and missing files are an error at once;
2. the qpruning cache, ``<cache>/data/longbench`` (where ``scripts/download_longbench.py`` writes by default);
3. the hub, only when it is reachable: ``datasets.load_dataset("THUDM/LongBench", name, split="test")``, and,
   where that fails (recent ``datasets`` releases no longer run the repository's loading script), the
   repository's ``data.zip``, extracted into the cache.

Offline (``HF_HUB_OFFLINE=1``/``HF_DATASETS_OFFLINE=1``, or no answer from the hub within ``hub_timeout``
seconds) the loader raises :class:`~qpruning.benchmarks.base.DataNotFoundError` at once, naming the missing
files and the command that fetches them. It never retries.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qpruning.errors import DataError, describe_type, kind_of, matches

from ..base import DataNotFoundError
from ..common import data_cache_dir, hub_offline_by_env, hub_reachable

logger = logging.getLogger(__name__)

HUB_REPO = "THUDM/LongBench"
HUB_ZIP = "data.zip"
FIELDS = ("input", "context", "answers", "length", "dataset", "language", "all_classes", "_id")
RECORD_TYPES: dict[str, object] = {
    "input": str, "context": str, "answers": list[str] | str, "_id": str | int, "length": int | None,
    "dataset": str | None, "language": str | None, "all_classes": list[str] | None,
}
"""The JSON type of each field of an official record (``read_jsonl`` refuses a record with another)."""


def file_name(dataset: str, e: bool = False) -> str:
    """``qasper.jsonl`` or, for LongBench-E, ``qasper_e.jsonl``."""
    return f"{dataset}_e.jsonl" if e else f"{dataset}.jsonl"


def default_dir() -> Path:
    """The qpruning cache folder for LongBench files."""
    return data_cache_dir("longbench")


def find_file(folder: str | os.PathLike, name: str) -> Path | None:
    """``folder/name`` or ``folder/data/name`` (the layout of the extracted ``data.zip``), if either exists."""
    for candidate in (Path(folder) / name, Path(folder) / "data" / name):
        if candidate.is_file():
            return candidate
    return None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a LongBench jsonl file; each must carry the official fields."""
    fields = ("input", "context", "answers", "_id")
    allowed = f"allowed: one JSON object per line with the official fields ({', '.join(fields)}: strings; answers: " \
        "a list of strings; length: a whole number); fetch the files again with scripts/download_longbench.py"
    records = []
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"data file {path} line {number} is not JSON ({exc.msg})", allowed) from None
                if not isinstance(record, dict):
                    raise DataError(f"data file {path} line {number} is not a JSON object", allowed)
                missing = [f for f in fields if f not in record]
                if missing:
                    raise DataError(f"data file {path} line {number} lacks the LongBench field(s) "
                                    f"{', '.join(missing)}", allowed)
                for name, annotation in RECORD_TYPES.items():
                    if name in record and not matches(record[name], annotation):
                        raise DataError(f"data file {path} line {number}: field {name!r} is "
                                        f"{kind_of(record[name])}, not {describe_type(annotation)}", allowed)
                records.append(record)
        except UnicodeDecodeError:
            raise DataError(f"data file {path} is not UTF-8 text", allowed) from None
    if not records:
        raise DataError(f"data file {path} is empty", allowed)
    return records


def missing_data_message(missing: Iterable[str], where: str) -> str:
    names = sorted(missing)
    return (
        f"LongBench data not found: {', '.join(names)} ({where}); "
        "to get it, run on a machine with internet: "
        "python scripts/download_longbench.py --out DIR (it fetches the LongBench and LongBench-E files), "
        "copy DIR here and run with benchmark.data_dir=DIR. "
        f"Files put in {default_dir()} are found without data_dir."
    )


def resolve_files(
    datasets: Iterable[str],
    e: bool = False,
    data_dir: str | os.PathLike | None = None,
    hub_timeout: float = 3.0,
) -> dict[str, Path]:
    """The local path of each dataset's jsonl file, fetching from the hub when needed and possible.

    Raises:
        DataNotFoundError: files are missing and cannot be fetched; the message lists them and the fix.
    """
    datasets = list(datasets)
    names = {d: file_name(d, e) for d in datasets}
    if data_dir is not None:
        found = {d: find_file(data_dir, n) for d, n in names.items()}
        missing = [names[d] for d, p in found.items() if p is None]
        if missing:
            raise DataNotFoundError(missing_data_message(missing, f"looked in data_dir={data_dir}"))
        return {d: p for d, p in found.items() if p is not None}

    cache = default_dir()
    found = {d: find_file(cache, n) for d, n in names.items()}
    missing = [d for d, p in found.items() if p is None]
    if not missing:
        return {d: p for d, p in found.items() if p is not None}
    if hub_offline_by_env():
        raise DataNotFoundError(
            missing_data_message([names[d] for d in missing], f"no data_dir, not in {cache}, and the hub is "
                                 "disabled by HF_HUB_OFFLINE/HF_DATASETS_OFFLINE")
        )  # fmt: skip
    if not hub_reachable(hub_timeout, repo=HUB_REPO):
        raise DataNotFoundError(
            missing_data_message([names[d] for d in missing], f"no data_dir, not in {cache}, and the hub "
                                 f"is unreachable (no answer within {hub_timeout:g} s)")
        )  # fmt: skip
    try:
        fetched = download(missing, e=e, out_dir=cache)
    except Exception as exc:  # any failure of the one download attempt: report it with the fix
        raise DataNotFoundError(
            missing_data_message(
                [names[d] for d in missing], f"the hub download failed: {type(exc).__name__}: {exc}"
            )
        ) from exc
    found.update(fetched)
    still = [names[d] for d, p in found.items() if p is None]
    if still:
        raise DataNotFoundError(missing_data_message(still, "not in the hub download either"))
    return {d: p for d, p in found.items() if p is not None}


def _write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps({k: record.get(k) for k in FIELDS}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _download_with_datasets(dataset: str, e: bool, out_dir: Path) -> Path:
    from datasets import load_dataset

    config = f"{dataset}_e" if e else dataset
    rows = load_dataset(HUB_REPO, config, split="test")
    path = out_dir / file_name(dataset, e)
    _write_jsonl(rows, path)
    return path


def _download_zip(datasets: list[str], e: bool, out_dir: Path) -> dict[str, Path]:
    from huggingface_hub import hf_hub_download

    archive = hf_hub_download(HUB_REPO, HUB_ZIP, repo_type="dataset")
    result: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        members = {Path(m).name: m for m in zf.namelist() if m.endswith(".jsonl")}
        for dataset in datasets:
            name = file_name(dataset, e)
            if name not in members:
                continue
            with tempfile.NamedTemporaryFile(dir=out_dir, delete=False, suffix=".part") as tmp:
                with zf.open(members[name]) as src:
                    shutil.copyfileobj(src, tmp)
            os.replace(tmp.name, out_dir / name)
            result[dataset] = out_dir / name
    return result


def download(
    datasets: Iterable[str], e: bool = False, out_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Fetch the official jsonl files of ``datasets`` from the hub into ``out_dir`` (default: the cache).

    Tries ``datasets.load_dataset`` per dataset first and falls back to the repository's ``data.zip`` for the
    ones it could not load. Returns the paths written; needs internet.
    """
    out = Path(out_dir) if out_dir is not None else default_dir()
    datasets = list(datasets)
    written: dict[str, Path] = {}
    failed: list[str] = []
    use_datasets = True
    for dataset in datasets:
        if use_datasets:
            try:
                written[dataset] = _download_with_datasets(dataset, e, out)
                logger.info("LongBench %s: loaded with datasets.load_dataset", file_name(dataset, e))
                continue
            except Exception as exc:  # script-based repositories fail on recent `datasets`: use the zip
                logger.info(
                    "datasets.load_dataset(%r, %r) failed (%s); using %s", HUB_REPO, dataset, exc, HUB_ZIP
                )
                use_datasets = False
        failed.append(dataset)
    if failed:
        written.update(_download_zip(failed, e, out))
    return written
