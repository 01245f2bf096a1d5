"""Append-only JSON-lines files and atomic JSON files: the run folder's records, written so a kill loses nothing.

One reader/repairer for every ``*.jsonl`` a run or a search appends to (``predictions.jsonl``,
``evaluations.jsonl``, RULER's sample cache): each line is one JSON object, appended and flushed as it is made.
A line that does not parse (cut by a kill, or damaged in the middle of the file) is skipped and named; with
``repair`` the file is rewritten with every good line, in order, and the bad lines are moved, verbatim, to
``<file>.rejected`` beside it, so nothing is lost and the next append starts on a clean line.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qpruning.errors import UserError

logger = logging.getLogger(__name__)

REJECTED_SUFFIX = ".rejected"


class RunFileError(UserError, RuntimeError):
    """A run file could not be written (full disk, no permission): one line for the user, exit status 1."""

    exit_code = 1

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def _bad_reason(raw: bytes, required: tuple[str, ...]) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` for a good line, ``(None, why)`` for a bad one."""
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "not valid JSON" + ("" if raw.endswith(b"\n") else ", cut short (a killed run?)")
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    missing = [key for key in required if key not in record]
    if missing:
        return None, f"no {', '.join(missing)}"
    return record, None


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    required: tuple[str, ...] = (),
    repair: bool = True,
    check: Callable[[dict[str, Any]], Any] | None = None,
) -> list[dict[str, Any]]:
    """Every good record of ``path`` (an empty list when it does not exist), in file order.

    A line is bad when it does not parse, is not an object, lacks a ``required`` key, or makes ``check`` raise
    (``TypeError`` / ``ValueError`` / ``KeyError``). Bad lines are skipped with one warning that names the file
    and the line numbers. With ``repair`` (the writer's view, under the run's lock), the file is rewritten
    atomically with the good lines only (a last line that lacks its newline gets one) and the bad lines are
    appended to ``<path>.rejected``.
    """
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    good: list[bytes] = []
    bad: list[tuple[int, bytes, str]] = []
    last = b"\n"
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            last = raw
            record, why = _bad_reason(raw, required)
            if record is not None and check is not None:
                try:
                    check(record)
                except (TypeError, ValueError, KeyError) as exc:
                    record, why = None, f"not a valid record ({exc})"
            if record is None:
                bad.append((number, raw, why or "bad"))
                continue
            records.append(record)
            good.append(raw if raw.endswith(b"\n") else raw + b"\n")
    if bad:
        where = "; ".join(f"line {number}: {why}" for number, _, why in bad)
        kept = f"kept the {len(records)} good records" if repair else f"read the {len(records)} good records"
        moved = f", moved the bad line(s) to {path.name}{REJECTED_SUFFIX}" if repair else ""
        logger.warning("%s: skipped %d bad line(s) (%s); %s%s", path, len(bad), where, kept, moved)
    if repair and (bad or not last.endswith(b"\n")):
        if bad:
            with path.with_name(path.name + REJECTED_SUFFIX).open("ab") as handle:
                for _, raw, _ in bad:
                    handle.write(raw if raw.endswith(b"\n") else raw + b"\n")
        write_bytes_atomic(path, b"".join(good))
    return records


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record as one line and make it durable (flush + fsync) before returning."""
    path = Path(path)
    line = (json.dumps(record, ensure_ascii=False, default=json_default) + "\n").encode("utf-8")
    try:
        with path.open("ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise _write_error(path, exc) from exc


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``path`` atomically: a hidden temp file beside it, fsync, rename; the temp file never stays."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from exc


def write_json_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """``data`` as indented JSON, written atomically (see :func:`write_bytes_atomic`)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=json_default)
    write_bytes_atomic(path, text.encode("utf-8"))


def json_default(value: Any) -> Any:
    """JSON for paths and tensors (``json.dumps(default=...)``)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # torch tensors and numpy arrays, without importing either
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _write_error(path: Path, exc: OSError) -> RunFileError:
    reason = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    hint = "free some space and rerun" if exc.errno == errno.ENOSPC else "fix it and rerun"
    return RunFileError(
        f"could not write {path}: {reason}; {hint} (finished samples are kept, a rerun resumes)", exc.errno
    )
