"""The schema of a configuration: every key a user can type, by type, before anything expensive runs.

One declaration per key, in one of two places:

- a **group**'s keys (``model.*``, ``pruner.*``, ``quant.*``, ``benchmark.*``, ``logger.*``) are the parameters of
  the class its ``_target_`` builds (:data:`GROUPS`): their annotations are their types (``lengths: list[int] |
  int | None``), and their ranges are checked by the class itself (``__post_init__``, with the ``check_*`` helpers
  of :mod:`qpruning.errors`), so that the library refuses from plain Python what the command line refuses;
- the **top-level** keys of ``conf/config.yaml`` (:class:`RunConfig`) and ``conf/optimize.yaml``
  (:class:`OptimizeConfig`) are the fields of a dataclass here. A field's metadata says who checks its value:
  ``owner`` (the object it becomes, e.g. the compressor for ``tokens``: checked when the preflight builds it), or
  ``check`` (a function here, for the keys nothing else reads as a value: ``output_root``, ``experiment_name``...).

:func:`check_keys` (before anything is resolved) refuses a key that nothing reads (``+limt=1``: "did you mean
limit?") and a key the run needs that ``~key`` removed; :func:`check_values` checks every value by type, the names
that become folders (no path separator, no ``..``: nothing is written outside ``output_root``), that ``output_root``
can be written, and the conflicts between keys that need no model (``layers`` beside an ``allocation``). The
preflight (:mod:`qpruning.entry`) runs both for every job of a sweep, then builds the objects. This module takes
plain Python containers: it does not import Hydra.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal

from qpruning.benchmarks import BENCHMARKS
from qpruning.cache import QUANTIZERS
from qpruning.errors import (
    ConfigError,
    check_fields,
    check_name,
    check_real,
    check_type,
    check_writable_folder,
    nearest,
    parameters,
)
from qpruning.loggers import NullLogger, WandbLogger
from qpruning.models import ModelSpec
from qpruning.pruners import PRUNERS

NAME_MAX = 255  # bytes in one folder name (Linux, macOS)

# The classes a group's ``_target_`` may name; a factory (``get_pruner``) picks its class by the node's ``name``.
GROUPS: dict[str, dict[str, Any]] = {
    "model": {"qpruning.models.ModelSpec": ModelSpec},
    "pruner": {"qpruning.pruners.get_pruner": PRUNERS},
    "quant": {"qpruning.cache.get_quantizer": QUANTIZERS},
    "benchmark": {"qpruning.benchmarks.get_benchmark": {name: cls for name, (cls, _) in BENCHMARKS.items()}},
    "logger": {"qpruning.loggers.NullLogger": NullLogger, "qpruning.loggers.WandbLogger": WandbLogger},
}
FACTORY_KEYS = ("_target_", "name")  # what a factory takes besides its class's parameters


def owned(by: str) -> Any:
    """A field whose value ``by`` checks (the object the preflight builds from it), type and range."""
    return field(default=dataclasses.MISSING, metadata={"owner": by})


def checked(check: Callable[[str, Any], None], default: Any = dataclasses.MISSING) -> Any:
    """A field this module checks with ``check(key, value)`` (after its type); ``default``: the key may be absent."""
    return field(default=default, metadata={"check": check})


def _type_only(key: str, value: Any) -> None:
    """Nothing beyond the annotation (``sliding: Literal["keep", "quantize"]``)."""


def _fraction(key: str, value: Any) -> None:
    check_real(key, value, low=0.0, high=1.0, allowed="allowed: a fraction in (0, 1] of the full 16-bit cache")


def _folder_name(key: str, value: Any) -> None:
    if value is not None:
        check_name(key, value)


def _allocation(key: str, value: Any) -> None:
    if value is not None and not value.strip():
        raise ConfigError(f"{key}={value!r} is empty", "allowed: the path of an allocation.yaml, or null (none)")


def _run_name(key: str, value: Any) -> None:
    """``run_name`` is a folder path under ``output_root``: relative, without ``..``, each name at most 255 bytes."""
    path = PurePath(value)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ConfigError(f"{key}={value!r} is not a folder inside output_root",
                          "allowed: a relative path without '..' (the default names it after the run)")
    for part in path.parts:
        if len(part.encode()) > NAME_MAX:
            raise ConfigError(f"{key}: the folder name {part[:40]!r}... is {len(part.encode())} bytes long",
                              f"allowed: at most {NAME_MAX} bytes per folder name (shorten layer_config or the names "
                              "that make it)")


@dataclass(kw_only=True)
class CommonConfig:
    """The top-level keys that ``conf/config.yaml`` and ``conf/optimize.yaml`` share."""

    bits: int = owned("the quantizer (quant.bits: ${bits})")
    group_size: int = owned("the quantizer (quant.group_size: ${group_size})")
    budget: float | None = owned("the compressor")
    full_cache_tokens: int | None = owned("the compressor")
    storage_dtype: str | None = owned("the compressor")
    seed: int = owned("the runner, or the search")
    output_root: str = checked(check_writable_folder)


@dataclass(kw_only=True)
class RunConfig(CommonConfig):
    """The top-level keys of ``conf/config.yaml`` (``python run.py``), besides the groups of :data:`GROUPS`."""

    tokens: int | None = owned("the compressor")
    default_budget: float = checked(_fraction)
    budget_mode: str = owned("the compressor")
    layers: list = owned("the compressor")
    layer_config: str | None = checked(_folder_name)
    allocation: str | None = checked(_allocation)
    kernel: str = owned("the compressor (and the job's machine: kernel=on)")
    sliding: Literal["keep", "quantize"] = checked(_type_only, default="keep")
    limit: int | None = owned("the runner")
    experiment_name: str | None = checked(_folder_name)
    run_name: str = checked(_run_name)
    compat: str = owned("the compressor")
    paper_sinks: int | None = checked(_type_only, default=None)  # compat=paper: pruner.sinks' default


@dataclass(kw_only=True)
class OptimizeConfig(CommonConfig):
    """The top-level keys of ``conf/optimize.yaml`` (``qpruning optimize``), besides its groups."""

    search: str = owned("the search (qpruning.app.optimize_setup)")
    groups: int = owned("the search (qpruning.app.optimize_setup)")
    bits_choices: Any = owned("the search")
    transfer_fraction: float = owned("the search")
    max_evaluations: int = owned("the search")
    tier_bits: Any = owned("the search (search=tiers)")
    tier_step: float = owned("the search (search=tiers)")
    calibration: Any = owned("the search")
    heldout: Any = owned("the search")


SCHEMAS: dict[str, tuple[type, tuple[str, ...]]] = {
    "config": (RunConfig, ("model", "pruner", "quant", "benchmark", "logger")),
    "optimize": (OptimizeConfig, ("model", "pruner", "quant")),
}
FOLDER_NAMES = ("model.name", "pruner.name", "quant.name", "benchmark.name")  # they name run folders


def schema(config_name: str) -> tuple[type, tuple[str, ...]]:
    """``(top-level dataclass, groups)`` of ``conf/<config_name>.yaml``."""
    return SCHEMAS.get(config_name, SCHEMAS["config"])


def check_keys(config_name: str, keys: Iterable[str]) -> None:
    """Raise :class:`ConfigError` for a top-level key that nothing reads (``+limt=1``) or one the run needs that is
    missing (``~limit``)."""
    top, groups = schema(config_name)
    keys = list(keys)
    known = [f.name for f in dataclasses.fields(top)] + list(groups)
    for key in keys:
        if key not in known:
            raise ConfigError(f"{key} is not a key of the configuration, and nothing reads it{nearest(key, known)}",
                              f"allowed: {', '.join(known)} (python run.py --cfg job shows them)")
    required = [f.name for f in dataclasses.fields(top) if f.default is dataclasses.MISSING] + list(groups)
    for key in required:
        if key not in keys:
            raise ConfigError(f"{key} is missing from the configuration (removed with ~{key}?)",
                              f"allowed: {key}=<value> (or {key}=null where it may be empty), not ~{key}")


def check_values(config_name: str, config: Mapping[str, Any], raw: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` for a value of the resolved ``config`` that its schema does not admit. ``raw``: the
    same configuration unresolved, where a group's field that is a top-level key (``quant.bits: ${bits}``) is left
    to that key's owner (the quantizer says ``bits=4.0`` with the bit widths it takes)."""
    top, groups = schema(config_name)
    owners = {f.name for f in dataclasses.fields(top) if "owner" in f.metadata}
    for name in groups:
        raw_node = (raw or {}).get(name)
        delegated = [key for key, value in raw_node.items() if _interpolates(value, owners)] \
            if isinstance(raw_node, Mapping) else []
        check_group(name, config[name], delegated)
    for key in FOLDER_NAMES:  # before run_name, which they make: the message names the key that was typed
        group, _, name = key.partition(".")
        if group in groups:
            check_name(key, config[group].get("name"))
    for spec in dataclasses.fields(top):
        if spec.name in config and "owner" not in spec.metadata:
            check_type(spec.name, config[spec.name], parameters(top)[spec.name])
            spec.metadata["check"](spec.name, config[spec.name])
    if config_name != "optimize" and config.get("allocation") and config.get("layers"):
        raise ConfigError("layers=... and allocation=... both set every layer's bits and tokens",
                          "allowed: one of them: an allocation file (from qpruning optimize), or layers= overrides")


def _interpolates(value: Any, keys: Collection[str]) -> bool:
    """Whether ``value`` is ``${key}`` for one of ``keys``."""
    match = re.fullmatch(r"\$\{(\w+)\}", value) if isinstance(value, str) else None
    return match is not None and match.group(1) in keys


def check_group(name: str, node: Any, delegated: Collection[str] = ()) -> None:
    """A group's node: a mapping whose ``_target_`` is one of :data:`GROUPS`, with the parameters its class takes
    (the types of the ``delegated`` fields are left to their owner)."""
    if not isinstance(node, Mapping):
        raise ConfigError(f"{name}={node!r} is not a configuration group", f"allowed: {name}=<one of conf/{name}/>")
    targets = GROUPS[name]
    target = node.get("_target_")
    if target not in targets:
        raise ConfigError(f"{name}._target_={target!r} is not what qpruning builds a {name} with",
                          f"allowed: {', '.join(targets)}")
    built = targets[target]
    node = {key: value for key, value in node.items() if key not in delegated}
    if isinstance(built, Mapping):  # a factory: the class of the node's name (an unknown name: the factory says)
        if node.get("name") not in built:
            return
        check_fields(name, built[node["name"]], node, what=f"{name}={node['name']}", skip=FACTORY_KEYS)
    else:
        what = f"{name}={node.get('name')}" if name == "model" else f"{name}={built.__name__}"
        check_fields(name, built, node, what=what, skip=("_target_",))


def launches_remotely(launcher: Mapping[str, Any] | None) -> bool:
    """Whether a sweep's launcher runs its jobs on other machines (Slurm): the preflight then leaves the checks of
    the machine (a CUDA device, flash-attn, Triton) to each job."""
    target = str((launcher or {}).get("_target_", ""))
    return "submitit" in target.lower() or "slurm" in target.lower()
