"""A run's identity: the resolved configuration minus run control, plus the contents of the files it reads.

Two runs share a folder (and a rerun resumes or returns the folder's results) exactly when their identities are
equal, so the identity covers every input that can change a result:

- every key of the resolved configuration except :data:`RUN_CONTROL_KEYS` (where to write, how many samples,
  where to log: they change what is done or shown, never a sample's result). ``limit`` is run control: a run
  with ``limit=2`` and one with ``limit=4`` share a folder, and the second continues the first.
- ``compat`` when it is ``methods`` (the default) is left out: methods runs keep their folders. A ``compat=paper``
  run adds :data:`PAPER_REVISION`, the revision of the port of the paper's code that computed it.
- for the keys in :data:`PATH_KEYS` (an allocation file, head-score files, local data files and folders), the
  SHA-256 of the contents instead of the path: editing ``allocation.yaml`` gives a new folder, moving the data
  does not. HeadKV's shipped scores file counts too when no file is given.

Model weights are identified by the model's name and ``name_or_path`` (hashing gigabytes per run would cost more
than it protects); ``model.local_path`` names a copy of the same weights and is run control.

How a run is *named* (in ``metrics.json``, run folders and reports) is defined here once too: :class:`RunLabels`
(the knobs a person sweeps over) and :data:`KEY_FIELDS` (the labels that tell two runs' configurations apart in a
report), both read by the report without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class RunLabels:
    """How a run is named in ``metrics.json`` and reports (the knobs a person sweeps over).

    Fields whose ``metadata`` says ``key=False`` name where a run comes from (a sweep, a benchmark variant), not
    its configuration: they are not part of :data:`KEY_FIELDS`.
    """

    benchmark: str
    model: str
    pruner: str
    quant: str
    bits: int
    group_size: int
    tokens: int | None = None
    budget: float | None = None
    budget_mode: str = "nominal"
    layer_config: str | None = None
    tiers: str | None = None
    compat: str = "methods"
    experiment: str | None = field(default=None, metadata={"key": False})
    benchmark_variant: str | None = field(default=None, metadata={"key": False})

    @classmethod
    def of(cls, benchmark, model, compressor, *, pruner=None, quantizer=None, layer_config: str | None = None,
           experiment: str | None = None, benchmark_variant: str | None = None) -> RunLabels:
        """The labels of a run of ``benchmark`` on ``model`` (a :class:`~qpruning.models.ModelSpec`) with
        ``compressor`` (a :class:`~qpruning.compressor.KVCompressor`): every configuration label read from them.
        The benchmark label is the benchmark itself (niah, ruler...), not the config variant (niah_small,
        ruler_8k), which only chooses samples (``benchmark_variant``): reports group runs by benchmark and
        benchmark_length. ``pruner``, ``quantizer``: the ones configured (default: the compressor's; ``compat=paper``
        swaps the quantizer for its HQQ counterpart, and the labels name the configured one)."""
        pruner = compressor.pruner if pruner is None else pruner
        quantizer = compressor.quantizer if quantizer is None else quantizer
        return cls(
            benchmark=type(benchmark).name, model=model.name, pruner=pruner.name, quant=quantizer.label,
            bits=quantizer.bits, group_size=quantizer.group_size, tokens=compressor.tokens, budget=compressor.budget,
            budget_mode=compressor.budget_mode, layer_config=layer_config, tiers=quantizer.tiers_label,
            compat=compressor.compat,
            experiment=experiment, benchmark_variant=benchmark_variant,
        )


BENCHMARK_LENGTH = "benchmark_length"
"""The one key field the run's benchmark gives (its context length), written next to the labels."""

KEY_FIELDS: tuple[str, ...] = (
    fields(RunLabels)[0].name,
    BENCHMARK_LENGTH,
    *(f.name for f in fields(RunLabels)[1:] if f.metadata.get("key", True)),
)
"""The configuration key of a run in reports: two complete runs with equal keys are duplicates."""


def budget_label(tokens, budget, mode="nominal") -> str:
    """``t512`` for a token budget, ``b1_64`` for a fraction (``b1_64x`` in exact accounting): run folder names."""
    if tokens is not None:
        return f"t{tokens}"
    if budget is None:
        return "full"
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        return f"b{budget}"  # not a budget: the configuration's validation says so, the name must not crash
    inverse = 1 / float(budget)
    label = f"b1_{round(inverse)}" if abs(inverse - round(inverse)) < 1e-6 else f"b{float(budget):g}"
    return label + ("x" if mode == "exact" else "")

# The run-control keys, in one place (dotted for nested keys). Everything else in the configuration is identity.
RUN_CONTROL_KEYS: tuple[str, ...] = (
    "hydra",               # Hydra's own settings (folders, launcher, sweeper)
    "run_name",            # the folder name itself (it contains the hash)
    "output_root",         # where folders go
    "experiment_name",     # which sweep folder and W&B group
    "limit",               # how many samples: a larger limit continues the same folder
    "max_evaluations",     # qpruning optimize: a larger one continues the same search
    "logger",              # W&B or nothing
    "progress",            # progress bars / verbosity, where a configuration sets them
    "verbose",
    "debug",
    "model.local_path",    # a local copy of the same weights
    "benchmark.hub_timeout",  # how long to wait for the hub
)

# Keys that hold paths of files or folders a run reads: their contents are hashed, not their names.
PATH_KEYS: tuple[str, ...] = (
    "allocation",
    "pruner.head_scores",
    "benchmark.data_dir",
    "benchmark.qa_data_dir",
)

DEFAULT_COMPAT = "methods"
HASH_LENGTH = 8
_digests: dict[tuple, str] = {}


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _drop(config: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def _put(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and last in node:
        node[last] = value


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = ("file", str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def content_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative paths and contents, hidden ones skipped);
    ``missing:<path>`` when there is nothing there (the run's own validation says so, in one line)."""
    path = Path(path).expanduser()
    if path.is_file():
        return _file_digest(path)
    if not path.is_dir():
        return f"missing:{path}"
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            file = Path(dirpath) / name
            digest.update(f"{file.relative_to(path).as_posix()}\0{_file_digest(file)}\n".encode())
    return digest.hexdigest()


def _shipped_head_scores(config: Mapping[str, Any]) -> Path | None:
    """HeadKV's scores file shipped for the model, when HeadKV runs without ``pruner.head_scores``."""
    if _get(config, "pruner.name") != "headkv" or _get(config, "pruner.head_scores"):
        return None
    from qpruning.head_scores import shipped_path

    name = _get(config, "pruner.model_name") or _get(config, "model.name")
    return shipped_path(name) if name else None


def input_files(config: Mapping[str, Any]) -> dict[str, str]:
    """``{key: content digest}`` for the files and folders the configuration points at."""
    files = {key: content_digest(str(_get(config, key))) for key in PATH_KEYS if _get(config, key)}
    shipped = _shipped_head_scores(config)
    if shipped is not None:
        files["pruner.head_scores"] = content_digest(shipped)
    return files


# Keys added after runs existed, at the value those runs had: left out of the identity when at that value.
DEFAULTS_LEFT_OUT: dict[str, Any] = {"compat": DEFAULT_COMPAT, "sliding": "keep", "quant.tiers": None,
                                     "search": "layers"}

# Keys read only when another key has a value (``qpruning optimize``'s tier_bits and tier_step: search=tiers):
# left out otherwise, so they never split the folders of the searches that ignore them.
READ_ONLY_WHEN: dict[str, tuple[str, Any]] = {"tier_bits": ("search", "tiers"), "tier_step": ("search", "tiers")}

PAPER_REVISION = 2
"""Revision of ``compat=paper``'s port of the paper's code, part of a paper run's identity. 2: the selection calls
``topk`` as the paper's code does and scores in the model's dtype (issue 27), so a paper run made before keeps its
folder and is never resumed by code that selects otherwise."""


def run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved configuration (a plain dict) minus run control, with file contents in place of paths."""
    identity = json.loads(json.dumps({k: v for k, v in config.items() if k not in RUN_CONTROL_KEYS}, default=str))
    for dotted in RUN_CONTROL_KEYS:
        _drop(identity, dotted)
    for key, default in DEFAULTS_LEFT_OUT.items():
        if _get(identity, key) == default:
            # a default is left out, so runs keep the folders they had before the key existed
            _drop(identity, key)
    for key, (condition, value) in READ_ONLY_WHEN.items():
        if _get(config, condition) != value:
            _drop(identity, key)
    if identity.get("compat") == "paper":
        identity["paper_revision"] = PAPER_REVISION
    files = input_files(config)
    for key in PATH_KEYS:
        _put(identity, key, files.get(key))
    return identity


def run_hash(config: Mapping[str, Any]) -> str:
    """A short hash of :func:`run_identity`: the last part of a run's folder name."""
    blob = json.dumps(run_identity(config), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:HASH_LENGTH]
