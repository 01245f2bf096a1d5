"""Where a run reports besides its folder: nowhere (:class:`NullLogger`) or Weights & Biases.

The run folder is the record; loggers are a view of it. A W&B run gets the configuration, a live view while it
runs (after each sample: samples done, the fraction done, the sample's score and the running score), the final
metrics (as its summary and as a log step) and a per-sample table; runs of one experiment (a sweep) share a W&B
group, named after the experiment, and ``python -m qpruning.report ... --wandb`` adds the report to that group.

W&B never holds a run up: without a network (the server cannot be reached within ``probe_timeout`` seconds, or
``wandb.init`` times out after ``init_timeout``), :func:`wandb_init` logs one warning and goes on offline (the
run can be uploaded later with ``wandb sync``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from qpruning.errors import check_choice, check_fields, check_real

if TYPE_CHECKING:  # wandb is imported when a run starts, not with this module
    from wandb import Run

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT = 3.0  # seconds to reach the W&B server before going offline
INIT_TIMEOUT = 3.0  # wandb's init_timeout online before going offline (wandb.init itself takes a few s more)
LOGGER_MODES = ("online", "offline", "disabled")  # logger.mode; null: WANDB_MODE decides

# -- the log file of each run of a group ----------------------------------------------------------------------

# The folder of the run that one process running several runs is working on (None: work for all of them, such as
# loading the model or a shared prefill), for the log files of each run (:class:`RunLogFilter`).
_CURRENT_RUN: ContextVar[Path | None] = ContextVar("qpruning_current_run", default=None)


@contextlib.contextmanager
def current_run(folder: Path) -> Iterator[None]:
    """Within the block, log records belong to the run of ``folder`` (:class:`RunLogFilter`)."""
    token = _CURRENT_RUN.set(Path(folder).resolve())
    try:
        yield
    finally:
        _CURRENT_RUN.reset(token)


class RunLogFilter(logging.Filter):
    """Lets through, for run ``folder``'s own log file, the records of that run and those of no run in particular
    (what its group does for all its runs): each run's log reads as if it had run alone, shared work included."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = Path(folder).resolve()

    def filter(self, record: logging.LogRecord) -> bool:
        current = _CURRENT_RUN.get()
        return current is None or current == self.folder



def _server_reachable(base_url: str, timeout: float) -> bool:
    """Whether a TCP connection to the W&B server opens within ``timeout`` seconds."""
    url = urlparse(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_init(
    *, probe_timeout: float = PROBE_TIMEOUT, init_timeout: float = INIT_TIMEOUT, **kwargs: Any
) -> Run:
    """``wandb.init(**kwargs)``, falling back to offline mode with one warning when the server cannot be reached.

    The mode is ``kwargs["mode"]`` or ``WANDB_MODE``; offline and disabled runs never touch the network. An online
    run first checks that the server (``WANDB_BASE_URL``) accepts a connection within ``probe_timeout``, then
    gives ``wandb.init`` ``init_timeout`` seconds; when either fails the run starts offline. Without a network the
    probe fails at once (no route, refused) or after ``probe_timeout``; a server that accepts and never answers
    costs ``init_timeout`` plus wandb's own start (under 10 s in all with the defaults, tested).
    """
    import wandb

    mode = kwargs.get("mode") or os.environ.get("WANDB_MODE") or "online"
    if mode not in ("online", "run"):
        return wandb.init(**kwargs)
    base_url = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    started = time.monotonic()
    reason = None
    if not _server_reachable(base_url, probe_timeout):
        reason = f"{base_url} cannot be reached"
    else:
        try:
            # the mode explicitly: wandb's process-wide settings may still hold an earlier run's mode
            return wandb.init(**{**kwargs, "mode": mode}, settings=wandb.Settings(init_timeout=init_timeout))
        except (wandb.errors.CommError, wandb.errors.UsageError, TimeoutError, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    logger.warning(
        "W&B: %s (%.0f s); logging offline instead (upload later with `wandb sync`)",
        reason, time.monotonic() - started,
    )
    return wandb.init(**{**kwargs, "mode": "offline"})


TABLE_COLUMNS = ("id", "task", "status", "score", "input_tokens", "kept_tokens", "kv_bytes", "prediction", "answers")


class RunLogger:
    """The interface: ``start`` before the samples, ``log_sample`` after each, ``finish`` with the metrics."""

    def start(self, config: dict[str, Any], output_dir: Path) -> None:
        pass

    def log_sample(
        self,
        record: dict[str, Any],
        done: int | None = None,
        total: int | None = None,
        running_score: float | None = None,
    ) -> None:
        """After each sample: its record, the samples done (earlier runs of the folder included) out of
        ``total``, and the benchmark's score over the samples done."""

    def finish(self, metrics: dict[str, Any], records: list[dict[str, Any]]) -> None:
        pass


class NullLogger(RunLogger):
    """Logs nothing (``logger=none``)."""


class WandbLogger(RunLogger):
    """Weights & Biases (``logger=wandb``).

    Args:
        project, entity, group, tags, name: as in ``wandb.init``; ``group`` defaults to the experiment name.
        mode: ``online``, ``offline`` or ``disabled``; ``None`` leaves it to ``WANDB_MODE`` (tests set offline).
        probe_timeout, init_timeout: seconds before a run without network goes offline (:func:`wandb_init`).
    """

    def __init__(
        self,
        project: str = "qpruning",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        mode: str | None = None,
        name: str | None = None,
        probe_timeout: float = PROBE_TIMEOUT,
        init_timeout: float = INIT_TIMEOUT,
    ) -> None:
        given = dict(project=project, entity=entity, group=group, tags=tags, mode=mode, name=name,
                     probe_timeout=probe_timeout, init_timeout=init_timeout)
        check_fields("logger", WandbLogger, given, what="logger=wandb")
        check_choice("logger.mode", mode, LOGGER_MODES, optional=True)
        for key in ("probe_timeout", "init_timeout"):
            check_real(f"logger.{key}", given[key], low=0.0, meaning="seconds")
        self.project, self.entity, self.group = project, entity, group
        self.tags, self.mode, self.name = list(tags or []), mode, name
        self.probe_timeout, self.init_timeout = float(probe_timeout), float(init_timeout)
        self.run: Run | None = None

    def start(self, config: dict[str, Any], output_dir: Path) -> None:
        self.run = run = wandb_init(
            probe_timeout=self.probe_timeout,
            init_timeout=self.init_timeout,
            project=self.project,
            entity=self.entity,
            group=self.group or config.get("experiment_name"),
            tags=self.tags,
            name=self.name or config.get("run_name"),
            config=config,
            mode=self.mode,
            dir=str(output_dir),
            reinit="finish_previous",
        )
        logger.info("W&B run %s (%s)", run.name, run.settings.mode)

    def log_sample(
        self,
        record: dict[str, Any],
        done: int | None = None,
        total: int | None = None,
        running_score: float | None = None,
    ) -> None:
        if self.run is None:
            return
        live: dict[str, Any] = {"sample/score": record.get("score"), "sample/seconds": record.get("seconds"),
                                "sample/failed": int(record.get("status") == "failed")}
        if done is not None:
            live["progress/samples_done"] = done
        if done is not None and total:
            live["progress/fraction"] = done / total
        if running_score is not None:
            live["progress/running_score"] = running_score
        self.run.log({k: v for k, v in live.items() if v is not None})

    def finish(self, metrics: dict[str, Any], records: list[dict[str, Any]]) -> None:
        import wandb

        if self.run is None:
            return
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for group in ("task_scores", "category_scores", "length_scores"):
            for key, value in (metrics.get(group) or {}).items():
                scalars[f"{group}/{key}"] = value
        table = wandb.Table(columns=list(TABLE_COLUMNS))
        for record in records:
            table.add_data(*[_cell(record.get(column)) for column in TABLE_COLUMNS])
        self.run.log({**scalars, "samples_table": table})
        self.run.summary.update(scalars)
        self.run.finish()
        self.run = None


def _cell(value):
    if isinstance(value, (list, dict)):
        return str(value)
    return value
