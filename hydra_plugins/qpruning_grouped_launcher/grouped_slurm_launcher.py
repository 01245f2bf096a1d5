"""The grouped launcher on Slurm (``hydra/launcher=slurm_gpu_grouped``): one Slurm job per group of a sweep's jobs.

The jobs that share model, benchmark, ``limit`` and ``seed`` (:func:`qpruning.launcher.job_group_key`, from their
composed configurations, on the submitting machine) go to one Slurm job, which runs them as the local grouped
launcher does (:func:`qpruning.launcher.launch_grouped`: one prefill per sample for the group). Everything else is the
submitit launcher's (hydra-submitit-launcher, ``pip install -e .[slurm]``): its parameters, its executor, its
requeueing; a group's Slurm job resubmitted after a timeout resumes each run where its files stop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the [slurm] extra is not installed: no Slurm launchers at all
    SlurmLauncher = None

if SlurmLauncher is not None:
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, filter_overrides

    class GroupedSlurmLauncher(SlurmLauncher):
        def group_call(self, jobs: list[list[str]], indices: list[int], singleton_state: dict) -> list[JobReturn]:
            """What one Slurm job runs: a group of the sweep's jobs, with one prefill per sample."""
            from qpruning.launcher import launch_grouped

            Singleton.set_state(singleton_state)
            return launch_grouped(self.hydra_context, self.task_function, self.config, jobs, indices[0],
                                  indices=indices)

        def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
            import submitit

            return submitit.helpers.DelayedSubmission(self.group_call, *args, **kwargs)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            from qpruning.launcher import group_jobs

            groups = group_jobs(self.hydra_context, self.config, job_overrides, initial_job_idx)
            log.info("Submitting %d jobs as %d Slurm jobs, one per group sharing model, benchmark and "
                              "samples: %s", len(job_overrides), len(groups), ", ".join(str(len(g)) for g in groups))
            for group in groups:
                for idx, overrides in group:
                    log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            executor = self._executor()
            state = Singleton.get_state()
            submitted = executor.map_array(self.group_call, [[list(o) for _, o in g] for g in groups],
                                           [[i for i, _ in g] for g in groups], [state] * len(groups))
            returns: dict[int, JobReturn] = {}
            for group, job in zip(groups, submitted):
                returns.update({idx: ret for (idx, _), ret in zip(group, job.results()[0])})
            return [returns[initial_job_idx + i] for i in range(len(job_overrides))]

        def _executor(self):
            """The submitit executor the base launcher makes (its parameters, its folder), with the sweep folder."""
            import os
            from pathlib import Path

            import submitit
            from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
            from omegaconf import OmegaConf

            init_keys = {"max_num_timeout"}
            executor = submitit.AutoExecutor(
                cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                **{f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in init_keys},
            )
            base = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                          for k, v in self.params.items() if k not in init_keys | {"submitit_folder"}})
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            return executor
