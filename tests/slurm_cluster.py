"""A real single-node Slurm cluster for tests: the ``slurm_cluster`` fixture and ``run_bounded``.

Not a test module. Use it from a test file with::

    import sys
    import pytest
    from slurm_cluster import SlurmCluster, run_bounded, slurm_cluster_fixture  # noqa: F401  (the fixture)

    @pytest.mark.slurm
    @pytest.mark.timeout(300)
    def test_sweep_on_slurm(slurm_cluster: SlurmCluster, tmp_path):
        sweep = tmp_path / "sweep"
        cmd = [sys.executable, "run.py", "-m", "model=tiny", "budget=0.1,0.5",
               *slurm_cluster.launcher_overrides(sweep)]
        proc = run_bounded(cmd, timeout_s=240, env=slurm_cluster.env(), cwd=REPO)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # job k of the sweep writes into sweep/<k>/ (hydra.sweep.subdir = ${hydra.job.num})

Importing ``slurm_cluster_fixture`` registers the fixture, named ``slurm_cluster``, in the test module (a
``conftest.py`` could import it instead, to offer it to every test). ``tests/`` has no ``__init__.py``: pytest
puts it on ``sys.path``, hence the plain import.

What the fixture does (session scope, so one cluster for the whole test session):

* Skips when ``slurmctld``, ``slurmd``, ``munged`` or the client commands are missing, or when not root
  (slurmd must be root to launch jobs). With ``QPRUNING_REQUIRE_SLURM`` set (to anything but ``""``/``"0"``),
  as in CI after ``scripts/slurm_local.sh install``, it fails instead of skipping.
* Runs ``scripts/slurm_local.sh start DIR`` in a pytest temp folder (kept after the run: the daemon logs are in
  ``DIR/log``), which waits for the node ``localhost`` to be idle.
* Sets ``SLURM_CONF`` in ``os.environ`` for the rest of the session (sbatch/squeue/submitit all read it),
  puts ``DIR/bin`` (the script's ``sacct`` stand-in, see below) first on ``PATH``, and yields a
  :class:`SlurmCluster`.
* At teardown, even after failures or timeouts, runs ``scripts/slurm_local.sh stop DIR``: cancels the jobs and
  stops slurmd, slurmctld and munged by their pid files.

Running the project's ``run.py`` (or any Hydra app) through the cluster needs:

* the overrides ``hydra/launcher=slurm_local hydra.sweep.dir=<absolute dir>`` (``launcher_overrides()``), and
  ``hydra.launcher.partition=<partition>`` (added too; the preset already says ``debug``, the script's default).
  ``conf/hydra/launcher/slurm_local.yaml`` must be on the app's config path: it is for run.py (``conf/``); a
  throwaway app copies it into its own ``conf/hydra/launcher/``. ``hydra.launcher.submitit_folder`` defaults to
  ``${hydra.sweep.dir}/.submitit/%j``; override it only to move the sbatch scripts and job logs elsewhere.
* the environment: ``SLURM_CONF`` and ``PATH`` with ``DIR/bin`` first (``env()`` gives ``os.environ`` with
  both; ``os.environ`` itself has them while the fixture is active). Nothing else: submitit writes
  ``<sys.executable> -u -m submitit.core._submit`` into the sbatch script, so the jobs run with the same
  interpreter as the submitting process (the venv's python, by absolute path, which activates the venv), and
  sbatch exports the submitter's environment and working directory to the job. Submit with the venv python
  (``sys.executable`` in tests), not a bare ``python`` from PATH. The task function is pickled: a function of
  the app's ``__main__`` is pickled by value, one from an installed module (``qpruning.cli``) by reference,
  which works because the job runs the same venv (qpruning is installed editable).
* a time bound (``run_bounded``): there is no accounting (no slurmdbd) and the real ``sacct`` fails. submitit
  polls sacct to notice jobs that died without writing their result (OOM kill, segfault, scancel); the
  ``DIR/bin/sacct`` stand-in answers from ``scontrol show job``, so the launcher raises ``UncompletedJobError``
  (state FAILED, with the job's stderr) about 15-20 s after such a death. Without it on PATH the launcher would
  wait forever; with it, a hang is still possible (e.g. a job aged out of slurmctld), hence the bound.
  Use :meth:`SlurmCluster.job_logs` to show the Slurm stdout/stderr on failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
LAUNCHER_PRESET = REPO / "conf" / "hydra" / "launcher" / "slurm_local.yaml"
REQUIRE_ENV = "QPRUNING_REQUIRE_SLURM"
PARTITION = (
    "debug"  # scripts/slurm_local.sh's default (SLURM_LOCAL_PARTITION), and what slurm_local.yaml says
)
# Daemons and the client commands the tests and submitit call (submitit's sacct: the script's stand-in).
REQUIRED_BINARIES = (
    "slurmctld",
    "slurmd",
    "munged",
    "sbatch",
    "squeue",
    "scontrol",
    "sinfo",
    "scancel",
    "srun",
)
# Finished (or dead) job states in `scontrol show job`.
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
    }
)
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 90
# The daemons live in /usr/sbin, not on every PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def run_bounded(
    cmd: Sequence[str | os.PathLike[str]],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with a hard wall-clock limit; return its CompletedProcess (stdout/stderr as text).

    The command runs in its own session (process group); on timeout the whole group gets SIGTERM, then SIGKILL
    after 5 s, and ``subprocess.TimeoutExpired`` is raised with the output captured so far. Output goes to
    temporary files, not pipes, so that a daemon or job started by the command that keeps the descriptors open
    cannot make us wait. A non-zero exit status is returned, not raised: check ``returncode``.
    """
    argv = [os.fspath(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )

        def read(f) -> str:
            f.seek(0)
            return f.read().decode("utf-8", errors="replace")

        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise subprocess.TimeoutExpired(argv, timeout_s, output=read(out), stderr=read(err)) from None
        except BaseException:  # KeyboardInterrupt, pytest-timeout: don't leave the group running
            _kill_group(proc)
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, read(out), read(err))


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, grace_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone, but other members of the group may still run: SIGKILL them too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


@dataclass(frozen=True)
class SlurmCluster:
    """The running local cluster. ``conf`` is the SLURM_CONF path; ``root`` holds state, logs, pid files."""

    root: Path
    conf: Path
    partition: str = PARTITION

    @property
    def bin_dir(self) -> Path:
        """Holds the ``sacct`` stand-in; first on PATH in :meth:`env`."""
        return self.root / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """``os.environ`` + ``SLURM_CONF`` + ``bin_dir`` first on ``PATH`` (+ ``extra``): the environment for
        sbatch, squeue and Hydra runs."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = _path_with(self.bin_dir, os.environ.get("PATH", ""))
        env.update(extra)
        return env

    def launcher_overrides(self, sweep_dir: str | os.PathLike[str]) -> list[str]:
        """Hydra overrides that send a ``-m`` sweep to this cluster, outputs in ``sweep_dir`` (made absolute)."""
        return [
            "hydra/launcher=slurm_local",
            f"hydra.launcher.partition={self.partition}",
            f"hydra.sweep.dir={Path(sweep_dir).resolve()}",
        ]

    def run(self, *cmd: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (``sinfo``, ``squeue``...) against this cluster, bounded in time."""
        return run_bounded(cmd, timeout_s=timeout_s, env=self.env())

    def job_state(self, job_id: str) -> str:
        """``JobState`` from ``scontrol show job`` (finished jobs stay visible for MinJobAge=600 s)."""
        proc = self.run("scontrol", "-o", "show", "job", str(job_id))
        for field in proc.stdout.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def wait_job(self, job_id: str, timeout_s: float = 60, poll_s: float = 0.5) -> str:
        """Poll until the job reaches a terminal state and return it; raise TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in TERMINAL_STATES:
                return state
            time.sleep(poll_s)
        raise TimeoutError(f"job {job_id} still {state} after {timeout_s}s\n{self.status()}")

    def status(self) -> str:
        """``scripts/slurm_local.sh status`` output (daemons, sinfo, squeue), for failure messages."""
        try:
            proc = run_bounded(["bash", SCRIPT, "status", self.root], timeout_s=30, env=self.env())
            return proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            return f"status timed out: {exc}"

    def daemon_logs(self, lines: int = 40) -> str:
        """Tails of the munged/slurmctld/slurmd logs, for failure messages."""
        chunks = []
        for log in sorted((self.root / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            chunks.append(f"----- {log} -----\n" + "\n".join(text))
        return "\n".join(chunks)

    @staticmethod
    def job_logs(submitit_dir: str | os.PathLike[str], lines: int = 40) -> str:
        """Tails of the submitit job logs (``*.out``/``*.err``) below ``submitit_dir``, for failure messages."""
        chunks = []
        for log in sorted(Path(submitit_dir).rglob("*_log.*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            chunks.append(f"----- {log} -----\n" + "\n".join(text))
        return "\n".join(chunks) or f"(no job logs below {submitit_dir})"


def _path_with(first: Path, path: str) -> str:
    """``first`` + ``path`` + the sbin folders, without duplicates."""
    parts = [str(first)] + path.split(os.pathsep) + ["/usr/sbin", "/sbin"]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))


def _unavailable_reason() -> str | None:
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b, path=_SEARCH_PATH) is None]
    if missing:
        return f"Slurm/munge binaries missing ({', '.join(missing)}): run scripts/slurm_local.sh install"
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing"
    if os.geteuid() != 0:
        return "the local Slurm cluster must be started as root (slurmd launches jobs as their user)"
    return None


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def _cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slurm")
    # munged's socket path must fit in a sockaddr_un (108 bytes); a deep --basetemp may not.
    if len(str(root / "munge" / "munge.socket.2")) > 100:
        root = Path(tempfile.mkdtemp(prefix="qpruning-slurm-"))
    return root


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """Start the local single-node Slurm cluster once per session; see the module docstring."""
    reason = _unavailable_reason()
    if reason is not None:
        if _required():
            pytest.fail(f"{REQUIRE_ENV} is set but the Slurm test cluster cannot run: {reason}")
        pytest.skip(reason)

    root = _cluster_dir(tmp_path_factory)
    cluster = SlurmCluster(
        root=root, conf=root / "slurm.conf", partition=os.environ.get("SLURM_LOCAL_PARTITION") or PARTITION
    )
    env = dict(os.environ, PATH=_SEARCH_PATH)
    try:
        try:
            proc = run_bounded(["bash", SCRIPT, "start", root], timeout_s=START_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"slurm_local.sh start did not finish in {START_TIMEOUT_S}s\n{exc.output}\n{exc.stderr}\n"
                f"{cluster.daemon_logs()}"
            )
        if (
            proc.returncode != 0
            or f"SLURM_CONF={cluster.conf}" not in proc.stdout
            or not (cluster.bin_dir / "sacct").is_file()
        ):
            pytest.fail(f"slurm_local.sh start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(cluster.conf))
            mp.setenv("PATH", _path_with(cluster.bin_dir, os.environ.get("PATH", "")))
            yield cluster
    finally:
        # Always, also when start failed half-way (the script cleans up after itself too; stop is idempotent).
        try:
            stop = run_bounded(["bash", SCRIPT, "stop", root], timeout_s=STOP_TIMEOUT_S, env=env)
            if stop.returncode != 0:
                print(f"slurm_local.sh stop failed ({stop.returncode}):\n{stop.stdout}\n{stop.stderr}")
        except subprocess.TimeoutExpired as exc:
            print(f"slurm_local.sh stop timed out after {STOP_TIMEOUT_S}s:\n{exc.output}\n{exc.stderr}")
