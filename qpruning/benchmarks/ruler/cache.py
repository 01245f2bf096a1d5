"""RULER's sample cache: one file per (task, length, seed, tokenizer...) that grows sample by sample.

Each line is one sample in index order, ``{"sample": {...}, "fit": [size, tokens, slope] | null}`` (the fit is
where the next sample's length search starts, so that a generation continued from the cache makes the samples a
generation from the first sample makes). Reads and appends hold an OS lock on the file (``fcntl.flock``), so the
jobs of a parallel sweep share it: a sample another job has appended meanwhile is not written twice. A damaged
line (a kill in the middle of an append) cuts the cache there; the samples after it are generated again. A cache
that cannot be written only costs regeneration next time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import IO

from ..base import Sample
from .generators import Fit

logger = logging.getLogger(__name__)


class SampleCache:
    """The cached samples of one RULER task (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._size: int | None = None  # the file's size after our last read or append
        self._usable = True

    @contextmanager
    def _locked(self) -> Iterator[IO[bytes]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield handle
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def read(self, limit: int, expected_id: Callable[[int], str]) -> list[tuple[Sample, Fit | None]]:
        """The first ``limit`` cached samples (fewer when fewer are cached) with their fits."""
        out: list[tuple[Sample, Fit | None]] = []
        try:
            with self._locked() as handle:
                handle.seek(0)
                good = 0
                for number, raw in enumerate(handle, 1):
                    if len(out) >= limit:
                        break
                    try:
                        data = json.loads(raw)
                        sample = Sample(**data["sample"])
                        fit = Fit(*data["fit"]) if data.get("fit") else None
                        valid = raw.endswith(b"\n") and sample.id == expected_id(len(out))
                    except (ValueError, TypeError, KeyError):
                        valid = False
                    if not valid:
                        logger.warning("%s: line %d is damaged; the cache is cut there (%d samples kept, the rest "
                                       "is generated again)", self.path, number, len(out))
                        handle.truncate(good)
                        break
                    out.append((sample, fit))
                    good += len(raw)
                self._size = os.fstat(handle.fileno()).st_size
        except OSError as exc:
            self._disable(exc)
        return out

    def append(self, index: int, sample: Sample, fit: Fit | None) -> None:
        """Append sample ``index`` unless the cache already holds it (another job wrote it meanwhile)."""
        if not self._usable:
            return
        line = (json.dumps({"sample": asdict(sample), "fit": list(asdict(fit).values()) if fit else None},
                           ensure_ascii=False) + "\n").encode("utf-8")
        try:
            with self._locked() as handle:
                size = os.fstat(handle.fileno()).st_size
                if size != self._size:  # someone else appended: write only if the file ends just before ours
                    handle.seek(0)
                    if sum(1 for _ in handle) != index:
                        self._size = size
                        return
                handle.write(line)
                handle.flush()
                self._size = size + len(line)
        except OSError as exc:
            self._disable(exc)

    def _disable(self, exc: OSError) -> None:
        self._usable = False
        logger.warning("could not use the RULER sample cache %s (%s); generating without it", self.path, exc)
