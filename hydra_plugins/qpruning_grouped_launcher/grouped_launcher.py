"""The grouped launcher: a sweep's jobs that share model, benchmark and samples run with one prefill per sample.

The work is :func:`qpruning.launcher.launch_grouped`; this class is what Hydra instantiates.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class GroupedLauncher(Launcher):
    """``batch_decode``: decode the runs of a group that share a quantizer as the rows of one batch (fewer decode
    steps, which pays on a GPU; on a CPU a batch costs about what its rows cost one by one. The last bits of a
    batch's arithmetic can differ from one row's: see :class:`qpruning.grouped.GroupRunner`)."""

    def __init__(self, batch_decode: bool = False) -> None:
        super().__init__()
        from qpruning.errors import check_bool

        check_bool("hydra.launcher.batch_decode", batch_decode)
        self.batch_decode = batch_decode
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from qpruning.launcher import launch_grouped

        if self.config is None or self.hydra_context is None or self.task_function is None:
            raise RuntimeError("GroupedLauncher.launch before setup")
        return launch_grouped(self.hydra_context, self.task_function, self.config, job_overrides, initial_job_idx,
                              batch_decode=self.batch_decode)
