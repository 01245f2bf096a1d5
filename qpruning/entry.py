"""The command-line front door of the Hydra applications: ``python run.py`` / ``qpruning run`` and ``qpruning
optimize``.

Hydra reports a mistake in its own way: a composition error (``pruner=tova``, ``bitz=4``) in several lines with
exit status 1, and an exception in the task function or in a folder-name resolver as a traceback. Here every
mistake in what the user gave is one line on stderr and exit status 2 (:mod:`qpruning.errors`), checked before
anything runs:

1. **Preflight** (:func:`preflight`): the configuration of every job is composed with Hydra's compose API (a
   ``-m`` sweep is expanded as Hydra's basic sweeper expands it, ``hydra.sweeper.params`` of an experiment
   included), checked against the schema (:mod:`qpruning.schema`: every key known, every value by type, the names
   that become folders inside ``output_root``, ``output_root`` writable), its objects built (each dataclass
   validates its fields' ranges) and checked against the model's config (bits, group size against ``head_dim``,
   budget against the pruner's window, the window against the model's positions, a typed ``tokens`` against the
   longest prompt) and this machine (the model's device, attention and dtype, ``kernel=on``; on Slurm, the job
   checks its own machine). A bad value anywhere in a sweep stops the sweep before its first job.
2. **The task** (:func:`run_task`, :func:`optimize_task`): the rest, which needs the tokenizer or the data (a
   corrupt data file, an empty benchmark), is checked by each job before its model loads, and reported the same
   way.

``--debug`` (or ``QPRUNING_DEBUG=1``, or Hydra's ``HYDRA_FULL_ERROR=1``) shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from qpruning.errors import ConfigError, MissingFileError, nearest, reported

logger = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Hydra flags after which nothing runs (help, printing the config, completion): no preflight for them.
INSPECT_FLAGS = ("-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--shell-completion",
                 "-sc", "--version", "-p", "--package")
# Flags that change where configurations come from: the preflight, which composes from conf/, steps aside.
SOURCE_FLAGS = ("--config-path", "-cp", "--config-dir", "-cd", "--experimental-rerun")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def run_task(cfg) -> float | None:
    """``python run.py``'s task: one run; a mistake found before the model loads is one line, exit 2."""
    from qpruning.app import run_job

    with reported():
        return run_job(cfg)


def run_task_runner(cfg):
    """:func:`run_task`'s job as a :class:`~qpruning.runner.Runner`, built and not run: the grouped launcher
    (``hydra/launcher=grouped``, :data:`qpruning.launcher.GROUPED_TASKS`) runs a sweep's runners in groups."""
    from qpruning.app import job_runner

    with reported():
        return job_runner(cfg)


def optimize_task(cfg) -> float:
    """``qpruning optimize``'s task, reported like :func:`run_task`."""
    from qpruning.app import run_optimize_job

    with reported():
        return run_optimize_job(cfg)


# -- preflight ------------------------------------------------------------------------------------------------


def check_run(cfg, folder: str, machine: bool = True) -> None:
    """What a run checks before its model loads, short of tokenizer and data (see :meth:`Runner.validate`);
    ``machine``: also what this machine must have (false when the job runs elsewhere)."""
    from qpruning.app import runner_from_config

    _validated(runner_from_config(cfg, folder), machine)


def check_optimize(cfg, folder: str, machine: bool = True) -> None:
    from qpruning.app import optimize_setup

    setup = optimize_setup(cfg)
    if machine:
        setup.spec.check_machine()


CHECKS: dict[str, Callable[[Any, str, bool], None]] = {"config": check_run, "optimize": check_optimize}


def check_schema(config_name: str, cfg) -> None:
    """``cfg`` against :mod:`qpruning.schema`: its keys before anything is resolved, then its resolved values."""
    from qpruning import schema
    from qpruning.app import plain

    schema.check_keys(config_name, list(cfg.keys()))
    schema.check_values(config_name, plain(cfg), plain(cfg, resolve=False))


def _validated(runner, machine: bool) -> None:
    # A sweep has many jobs and few models: read each model's config once. A config this machine cannot read
    # (a hub model not downloaded where a Slurm sweep is submitted) is checked by the job, before its weights.
    try:
        config = _model_config(runner.model)
    except MissingFileError as exc:
        logger.info("preflight: %s; the job checks it", exc.what)
        runner.benchmark.validate(runner.model.context_window)
        if machine:
            runner.model.check_machine()
    else:
        runner.check(config, machine=machine)


_MODEL_CONFIGS: dict[str, Any] = {}


def _model_config(spec):
    key = repr(spec)
    if key not in _MODEL_CONFIGS:
        _MODEL_CONFIGS[key] = spec.load_config()
    return _MODEL_CONFIGS[key]


def split_flags(argv: list[str]) -> tuple[str | None, bool, list[str], bool]:
    """``(config_name or None, multirun, overrides, preflight possible)`` from Hydra's command line."""
    config_name, multirun, overrides, possible = None, False, [], True
    args = iter(argv)
    for arg in args:
        flag, _, value = arg.partition("=")
        if arg in ("-m", "--multirun"):
            multirun = True
        elif flag in ("-cn", "--config-name"):
            config_name = value or next(args, None)
        elif flag in SOURCE_FLAGS or arg in INSPECT_FLAGS or flag in ("--cfg", "--info", "--package"):
            possible = False
        elif arg.startswith("-"):
            possible = False  # a flag this front door does not know: leave it to Hydra
        else:
            overrides.append(arg)
    return config_name, multirun, overrides, possible


def job_overrides(config_name: str, overrides: list[str], launcher: dict | None = None) -> list[list[str]]:
    """The overrides of every job of a ``-m`` sweep, as Hydra's basic sweeper forms them; ``launcher``, when
    given, gets the sweep's ``hydra.launcher`` node."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hydra = GlobalHydra.instance().hydra
    if hydra is None:
        raise RuntimeError("job_overrides: Hydra is not initialized (call it inside initialize_config_dir)")
    sweep_cfg = hydra.compose_config(config_name, overrides, run_mode=RunMode.MULTIRUN,
                                     with_log_configuration=False)
    check_launcher(sweep_cfg.hydra.launcher)
    if launcher is not None:
        launcher.update(cast("dict[str, Any]", OmegaConf.to_container(sweep_cfg.hydra.launcher, resolve=False)))
    parser = OverridesParser.create()
    if sweep_cfg.hydra.sweeper.get("_target_") != BASIC_SWEEPER:  # another sweeper: check the fixed values only
        return [[o.input_line for o in parser.parse_overrides(overrides)
                 if o.input_line is not None and not o.is_sweep_override()]]
    params = [f"{key}={value}" for key, value in (sweep_cfg.hydra.sweeper.get("params") or {}).items()]
    return BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)[0]


def preflight(config_name: str, overrides: list[str], multirun: bool = False) -> int:
    """Compose and check the configuration of every job; raises :class:`UserError`. Returns the job count."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from qpruning.app import register_resolvers
    from qpruning.schema import launches_remotely

    register_resolvers()
    check = CHECKS.get(config_name, check_run)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            launcher: dict = {}
            jobs = job_overrides(config_name, overrides, launcher) if multirun else [overrides]
            machine = not launches_remotely(launcher)  # a Slurm job checks its own machine
            for cfg in job_configs(config_name, jobs):
                check_schema(config_name, cfg)
                check(cfg, str(Path(str(cfg.get("output_root", "outputs"))) / "preflight"), machine)
    except Exception as exc:
        converted = as_user_error(exc)
        if converted is exc:
            raise
        raise converted from exc
    finally:
        GlobalHydra.instance().clear()
    return len(jobs)


def check_launcher(launcher) -> None:
    """The launcher's own switches (``hydra.launcher.batch_decode=maybe`` is a mistake, not ``true``)."""
    from qpruning.errors import check_bool

    if "batch_decode" in launcher:
        check_bool("hydra.launcher.batch_decode", launcher.batch_decode)


def job_configs(config_name: str, jobs: list[list[str]]) -> Iterator[Any]:
    """The task configuration of each job (no ``hydra`` node), as Hydra composes it.

    A sweep's jobs mostly differ in values (``bits=4,8,16``), not in config groups: the groups are composed
    once per distinct choice and the values applied to a copy, as Hydra itself applies them after composing the
    defaults. Whatever this shortcut cannot apply goes through Hydra's full composition, error included.
    """
    from hydra import compose
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    parser = OverridesParser.create()
    composed: dict[tuple[str, ...], Any] = {}
    for job in jobs:
        try:
            parsed = parser.parse_overrides(list(job))
            groups = tuple(o.input_line for o in parsed if o.input_line is not None and _is_group(o.key_or_group))
            values = [o for o in parsed if not _is_group(o.key_or_group) and not o.is_hydra_override()]
            if groups not in composed:
                composed[groups] = compose(config_name, overrides=list(groups))
            cfg = OmegaConf.create(composed[groups])  # a copy, flags included
            if not isinstance(cfg, DictConfig):
                raise TypeError("a composed configuration is a mapping")
            OmegaConf.set_struct(cfg, True)
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        except Exception:
            cfg = compose(config_name, overrides=list(job))  # Hydra's own path: its exact config or error
        yield cfg


def _is_group(key: str) -> bool:
    """A config group (``pruner``, ``+layerwise``, ``hydra/launcher``), not a value (``bits``, ``pruner.window``)."""
    return "." not in key and ((CONF_DIR / key).is_dir() or key.startswith("hydra/"))


def as_user_error(exc: Exception) -> Exception:
    """A Hydra or OmegaConf error about the configuration as a :class:`ConfigError`; anything else unchanged."""
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from qpruning.errors import UserError

    if isinstance(exc, UserError):
        return exc
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, UserError):  # raised by a resolver, wrapped by OmegaConf
        return cause
    if not isinstance(exc, (HydraException, OmegaConfBaseException)) and not _raised_by_hydra(exc):
        return exc
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    what = lines[0] if lines else type(exc).__name__
    if isinstance(exc, MissingConfigException) and exc.options:
        group, _, name = str(exc.missing_cfg_file or "").rpartition("/")
        what = f"{group}={name} is not an option" if group and name else what
        return ConfigError(what, "allowed: " + ", ".join(exc.options))
    if isinstance(exc, ConfigCompositionException) and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        key = cause.full_key or cause.key
        parent = getattr(cause, "parent_node", None)
        siblings = [str(k) for k in parent.keys()] if parent is not None and hasattr(parent, "keys") else []
        prefix = str(key)[: len(str(key)) - len(str(cause.key))]
        return ConfigError(f"{key} is not a key of the configuration{nearest(str(cause.key), siblings, prefix)}",
                           "allowed: the keys that `--cfg job` prints (a new key needs a leading +)")
    allowed = " ".join(lines[1:3]) or "see python run.py --help for the syntax and conf/config.yaml for the keys"
    return ConfigError(what, allowed)


def _raised_by_hydra(exc: Exception) -> bool:
    """Whether ``exc`` is a ``ValueError``/``TypeError`` that Hydra or OmegaConf raised about the configuration itself
    (``compat=0``: "Config group override must be a string or a list"), not one of qpruning's own."""
    if not isinstance(exc, (ValueError, TypeError)):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""
    return module.split(".")[0] in ("hydra", "omegaconf")


# -- the entry ----------------------------------------------------------------------------------------------


def hydra_entry(config_name: str, task: Callable, argv: list[str], prog: str) -> None:
    """Preflight, then Hydra's own ``main`` with ``task`` (see the module docstring)."""
    import hydra

    from qpruning.app import register_resolvers

    if not (CONF_DIR / f"{config_name}.yaml").is_file():
        raise SystemExit(f"qpruning {prog} needs the repository's conf/ folder ({CONF_DIR} not found): "
                         "run it from a checkout installed with pip install -e .")
    # The checkout's own Hydra plugins (hydra_plugins/qpruning_grouped_launcher: the default launcher of -m) from
    # any folder, as run.py finds them beside itself; before Hydra first looks for plugins (the preflight).
    if str(CONF_DIR.parent) not in sys.path:
        sys.path.insert(1, str(CONF_DIR.parent))
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        os.environ["QPRUNING_DEBUG"] = "1"  # the tasks (and Slurm jobs, which inherit it) show tracebacks too
    name, multirun, overrides, possible = split_flags(argv)
    if possible:
        with reported():
            preflight(name or config_name, overrides, multirun)
    register_resolvers()
    sys.argv = [prog, *argv]
    hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(task)()
