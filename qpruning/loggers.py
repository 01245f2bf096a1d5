"""Where a run reports besides its folder: nowhere (:class:`NullLogger`) or Weights & Biases.

The run folder is the record; loggers are a view of it. A W&B run gets the configuration, the final metrics
(as its summary and as a log step), and a per-sample table; runs of one experiment share a W&B group.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ("id", "task", "status", "score", "input_tokens", "kept_tokens", "kv_bytes", "prediction", "answers")


class RunLogger:
    """The interface: ``start`` before the samples, ``log_sample`` after each, ``finish`` with the metrics."""

    def start(self, config: dict[str, Any], output_dir: Path) -> None:
        pass

    def log_sample(self, record: dict[str, Any]) -> None:
        pass

    def finish(self, metrics: dict[str, Any], records: list[dict[str, Any]]) -> None:
        pass


class NullLogger(RunLogger):
    """Logs nothing (``logger=none``)."""


class WandbLogger(RunLogger):
    """Weights & Biases (``logger=wandb``).

    Args:
        project, entity, group, tags, name: as in ``wandb.init``; ``group`` defaults to the experiment name.
        mode: ``online``, ``offline`` or ``disabled``; ``None`` leaves it to ``WANDB_MODE`` (tests set offline).
    """

    def __init__(
        self,
        project: str = "qpruning",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        mode: str | None = None,
        name: str | None = None,
    ) -> None:
        self.project, self.entity, self.group = project, entity, group
        self.tags, self.mode, self.name = list(tags or []), mode, name
        self.run = None

    def start(self, config: dict[str, Any], output_dir: Path) -> None:
        import wandb

        self.run = wandb.init(
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
        logger.info("W&B run %s (%s)", self.run.name, self.run.settings.mode)

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
