"""One process per run folder: an OS file lock (``fcntl.flock``) on ``<run folder>/.run.lock``.

The lock is held for the whole run and released by the kernel when the process ends, however it ends (a
SIGKILL, an out-of-memory kill): there is no stale lock to clean up. A second
process on the same folder does not wait: it stops at once with one line naming the process that holds the folder
(:class:`RunLockedError`, exit status 2), before loading anything. The lock file stays in the folder and holds the
id of the last process that ran it.

On file systems without ``flock`` (some network mounts) the lock cannot be taken: the run goes on with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from qpruning.errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"


class RunLockedError(UserError, RuntimeError):
    """Another live process holds the run folder: one line for the user, exit status 2."""


class RunLock:
    """``with RunLock(folder): ...`` holds ``folder`` for this process, or raises :class:`RunLockedError`."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by subprocesses (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"{self.folder} is being run by process {holder}",
                    "wait for it to finish (or stop it), then rerun: the rerun resumes where it stopped",
                ) from None
            logger.warning("cannot lock %s (%s): running without a lock", self.path, exc)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
