"""The grouped launcher's work (``python run.py -m``, ``hydra/launcher=grouped``, the default; and its Slurm
variant): a sweep's jobs set up as Hydra's basic launcher sets them up, then run in groups that share each sample's
prefill (:mod:`qpruning.grouped`). The Hydra plugins (``hydra_plugins/qpruning_grouped_launcher``) are the classes
Hydra instantiates; they call :func:`launch_grouped` and :func:`group_jobs`.

Which task functions run grouped is named here (:data:`GROUPED_TASKS`): ``python run.py``'s task
(:func:`qpruning.entry.run_task`), with what builds one job's :class:`~qpruning.runner.Runner` without running it
(:func:`qpruning.entry.run_task_runner`). Any other task runs job by job, as the basic launcher runs it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf, open_dict

from qpruning.app import summary_line
from qpruning.entry import run_task, run_task_runner
from qpruning.grouped import SHARED_BY, GroupRunner, group_runners
from qpruning.loggers import RunLogFilter

logger = logging.getLogger(__name__)

GROUPED_TASKS: dict[Callable[[Any], Any], Callable[[Any], Any]] = {run_task: run_task_runner}
"""The task functions whose jobs run in groups, each with the function that builds one job's runner (not run)."""


def launch_grouped(hydra_context, task_function, config, job_overrides, initial_job_idx: int,
                   batch_decode: bool = False, indices: list[int] | None = None) -> list:
    """What ``hydra/launcher=grouped`` (the default of ``python run.py -m``) does with a sweep's jobs.

    Each job is set up as Hydra's basic launcher sets it up (its composed configuration, its folder, its
    ``.hydra/`` files, its log file), and its :class:`~qpruning.runner.Runner` built, not run (the task's entry in
    :data:`GROUPED_TASKS`; a task without one runs job by job, as the basic launcher runs it). The runners are
    then run in groups that share model, benchmark, limit and seed (:func:`qpruning.grouped.group_runners`): one
    prefill per sample for the whole group (:class:`~qpruning.grouped.GroupRunner`). Each job's log file gets its
    own run's lines and the group's shared ones; each job prints its summary line and returns its score, as one by
    one. ``batch_decode``: see :class:`~qpruning.grouped.GroupRunner` (``hydra.launcher.batch_decode=true``).
    ``indices``: the jobs' numbers in the sweep (default: from ``initial_job_idx`` on; a Slurm group's jobs need
    not be consecutive).
    """
    from hydra.core.utils import JobStatus, configure_log, filter_overrides, setup_globals
    from hydra.core.utils import run_job as hydra_run_job

    from qpruning.errors import reported

    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    build = GROUPED_TASKS.get(task_function)
    logger.info("Launching %d jobs locally%s", len(job_overrides),
                ", grouped: one prefill per sample for the jobs that share model, benchmark and samples"
                if build else " (a task without runners: one by one)")
    jobs = []
    indices = list(indices) if indices is not None else [initial_job_idx + i for i in range(len(job_overrides))]
    for idx, overrides in zip(indices, job_overrides):
        logger.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        ret = hydra_run_job(hydra_context=hydra_context, task_function=build or task_function, config=sweep_config,
                            job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        jobs.append((sweep_config, ret))
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    if build is None:
        return [ret for _, ret in jobs]
    built = {id(ret.return_value): (job_config, ret) for job_config, ret in jobs if ret.status == JobStatus.COMPLETED}
    groups = group_runners([ret.return_value for _, ret in jobs if ret.status == JobStatus.COMPLETED])
    logger.info("%d jobs in %d groups: %s", len(built), len(groups), ", ".join(str(len(g)) for g in groups))
    for group in groups:
        members = [built[id(runner)] for runner in group]
        with _run_logs(members, config.hydra.verbose):
            try:
                with reported():  # a UserError ends the sweep with its one line, as in a one-by-one job
                    results = GroupRunner(group, batch_decode=batch_decode).run()
            except Exception as exc:
                logger.exception("group of %d jobs failed", len(group))
                for _, ret in members:
                    ret.return_value, ret.status = exc, JobStatus.FAILED
            else:
                for runner, metrics, (_, ret) in zip(group, results, members):
                    print(summary_line(metrics, runner.output_dir), flush=True)
                    ret.return_value = metrics.get("score")
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return [ret for _, ret in jobs]


def job_group_key(cfg) -> str:
    """What the jobs of one group share: the configuration keys :data:`qpruning.grouped.SHARED_BY` (which
    :func:`qpruning.grouped.shareable` compares again on the runners)."""
    return repr([OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                 for k in SHARED_BY])


def group_jobs(hydra_context, config, job_overrides, initial_job_idx: int) -> list[list[tuple[int, list[str]]]]:
    """A sweep's ``(job number, overrides)`` in groups of :func:`job_group_key`, in order of first appearance."""
    groups: dict[str, list[tuple[int, list[str]]]] = {}
    for offset, overrides in enumerate(job_overrides):
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        groups.setdefault(job_group_key(cfg), []).append((initial_job_idx + offset, list(overrides)))
    return list(groups.values())


@contextlib.contextmanager
def _run_logs(members: list, verbose) -> Iterator[None]:
    """Within the block, logging as the first job's ``hydra.job_logging`` sets it, its file handlers copied into
    every member job's folder, each one filtered to its run (:class:`~qpruning.loggers.RunLogFilter`)."""
    from hydra.core.utils import configure_log

    configure_log(members[0][0].hydra.job_logging, verbose)
    root = logging.getLogger()
    templates = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    for handler in templates:
        root.removeHandler(handler)
        handler.close()
    handlers = []
    for job_config, _ in members:
        folder = Path(job_config.hydra.runtime.output_dir)
        for template in templates:
            handler = logging.FileHandler(folder / Path(template.baseFilename).name, encoding=template.encoding)
            handler.setFormatter(template.formatter)
            handler.setLevel(template.level)
            handler.addFilter(RunLogFilter(folder))
            root.addHandler(handler)
            handlers.append(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
