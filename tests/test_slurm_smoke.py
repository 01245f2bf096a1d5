"""Smoke tests of the local Slurm cluster (scripts/slurm_local.sh) and of the Hydra submitit launcher on it.

Skipped without the Slurm/munge packages (or not as root), unless QPRUNING_REQUIRE_SLURM is set: see
tests/slurm_cluster.py. About 30 s on two cores: Python start-up in the Hydra jobs, and submitit's grace
period (~15 s) for the result file of the job killed on purpose.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import LAUNCHER_PRESET, SlurmCluster, run_bounded, slurm_cluster_fixture  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]

JOB_TIMEOUT_S = 60
SWEEP_TIMEOUT_S = 120


def test_sbatch_with_memory_request(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "wrap-%j.out"
    proc = slurm_cluster.run(
        "sbatch", "--parsable", "--mem=500M", "--time=2", f"--output={out}", "--chdir", str(tmp_path),
        "--wrap", 'echo "hello from $SLURM_JOB_ID on $(hostname) mem=$SLURM_MEM_PER_NODE"',
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    assert job_id.isdigit(), proc.stdout

    state = slurm_cluster.wait_job(job_id, timeout_s=JOB_TIMEOUT_S)
    log = Path(str(out).replace("%j", job_id))
    assert state == "COMPLETED", (
        f"{state}\n{log.read_text() if log.exists() else '(no output)'}\n{slurm_cluster.daemon_logs()}"
    )
    # The request reached the job: memory is a consumable resource on this node, not ignored.
    assert log.read_text().strip() == f"hello from {job_id} on {socket.gethostname()} mem=500"
    info = slurm_cluster.run("scontrol", "-o", "show", "job", job_id).stdout
    assert "MinMemoryNode=500M" in info, info

    # More memory than the node advertises (RealMemory) is refused at submission, not queued forever.
    too_much = slurm_cluster.run("sbatch", "--parsable", "--mem=100000G", "--wrap", "true")
    assert too_much.returncode != 0, too_much.stdout
    assert "Requested node configuration is not available" in too_much.stderr, too_much.stderr


# x=-1 kills the job hard (as the OOM killer would): no result file, nothing for submitit to unpickle.
APP = """\
import os, signal, sys
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    if cfg.x < 0:
        os.kill(os.getpid(), signal.SIGKILL)
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "result.txt").write_text(f"x={cfg.x} job={os.environ['SLURM_JOB_ID']} python={sys.executable}\\n")

if __name__ == "__main__":
    main()
"""


def _write_app(app_dir: Path) -> Path:
    """A throwaway Hydra app with its own conf dir. Our slurm_local preset is copied in unchanged, so the tests
    cover the preset itself (its defaults list extends the plugin's submitit_slurm)."""
    (app_dir / "conf" / "hydra" / "launcher").mkdir(parents=True)
    (app_dir / "app.py").write_text(APP)
    (app_dir / "conf" / "config.yaml").write_text("x: 0\n")
    shutil.copy(LAUNCHER_PRESET, app_dir / "conf" / "hydra" / "launcher" / "slurm_local.yaml")
    return app_dir / "app.py"


def _sweep(cluster: SlurmCluster, app: Path, sweep: Path, values: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, app, "-m", f"x={values}", *cluster.launcher_overrides(sweep)]
    try:
        return run_bounded(cmd, timeout_s=SWEEP_TIMEOUT_S, env=cluster.env(), cwd=sweep.parent)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"Hydra sweep did not finish in {SWEEP_TIMEOUT_S}s\n{exc.output}\n{exc.stderr}\n"
            f"{cluster.status()}\n{SlurmCluster.job_logs(sweep / '.submitit')}"
        )


def test_hydra_submitit_sweep(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _sweep(slurm_cluster, _write_app(tmp_path / "app"), sweep, "1,2")
    assert proc.returncode == 0, (
        f"{proc.stdout}\n{proc.stderr}\n{slurm_cluster.status()}\n{SlurmCluster.job_logs(sweep / '.submitit')}"
    )
    assert "Submitit 'slurm' sweep output dir" in proc.stdout + proc.stderr

    # Two sweep points, two Slurm jobs, each writing into its own Hydra output folder (hydra.sweep.subdir).
    job_ids = set()
    for num, x in enumerate((1, 2)):
        result = sweep / str(num) / "result.txt"
        assert result.is_file(), SlurmCluster.job_logs(sweep / ".submitit")
        fields = dict(kv.split("=", 1) for kv in result.read_text().split())
        assert fields["x"] == str(x)
        # The job ran under Slurm, with the submitting interpreter (the venv's python).
        assert fields["job"], fields
        assert fields["python"] == sys.executable, fields
        job_ids.add(fields["job"])
    assert len(job_ids) == 2
    # The launcher preset's submitit_folder: sbatch scripts and job logs next to the sweep outputs.
    assert list((sweep / ".submitit").rglob("*_submission.sh")), list(sweep.rglob("*"))


def test_hydra_sweep_fails_fast_on_a_killed_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # Without accounting, submitit learns that a job died without a result only from the sacct stand-in of
    # scripts/slurm_local.sh; with the real (disabled) sacct it would wait until SWEEP_TIMEOUT_S.
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    proc = _sweep(slurm_cluster, _write_app(tmp_path / "app"), sweep, "3,-1")
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "UncompletedJobError" in output and "(state: FAILED)" in output, output
    assert elapsed < 60, f"took {elapsed:.0f}s to notice the dead job"
    # The healthy sweep point still finished.
    assert (sweep / "0" / "result.txt").read_text().startswith("x=3 ")
