"""Walk result folders and gather every run into one pandas table.

A run folder is any folder that holds ``predictions.jsonl`` or ``metrics.json`` (see ``docs/results-format.md``),
at any depth under the paths given: single runs, Hydra multiruns (``multirun/DATE/TIME/N/``), SLURM sweeps, and
copies of several machines' output side by side.

Rules (also in ``docs/report.md``):

- **complete**: ``metrics.json`` exists and parses. Only complete runs are results.
- **partial**: ``predictions.jsonl`` without ``metrics.json`` (or with an unreadable one). Listed with the samples
  done so far, never used in a table or a figure. Its configuration comes from ``.hydra/config.yaml`` when present.
- **duplicates**: complete runs with the same configuration key (:data:`KEY_FIELDS`). The most recent one (by the
  modification time of ``metrics.json``, ties broken by path) is kept; the others are listed as duplicates with
  their scores, and each kept run carries ``n_runs`` (how many complete runs share its key). Never averaged.
- The same folder reached through two overlapping input paths is read once.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qpruning.identity import DEFAULT_COMPAT, KEY_FIELDS  # the configuration key of a run, defined once

from . import labels

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"



RESULT_FIELDS: tuple[str, ...] = (
    *KEY_FIELDS,
    "tokens_effective",
    "experiment",
    "score",
    "task_scores",
    "category_scores",
    "length_scores",
    "kv_bytes",
    "kv_bytes_full",
    "samples",
    "failed",
    "seconds",
    "config",
)
"""Every field of ``metrics.json`` that the report keeps (the contract of ``docs/results-format.md``)."""

_INT_FIELDS = ("benchmark_length", "bits", "group_size", "samples", "failed")
_FLOAT_FIELDS = ("tokens", "budget", "tokens_effective", "score", "kv_bytes", "kv_bytes_full", "seconds")
_STR_FIELDS = ("benchmark", "model", "pruner", "quant", "budget_mode", "layer_config", "tiers", "compat", "experiment")
_DICT_FIELDS = ("task_scores", "category_scores", "length_scores", "config")
_SKIP_DIRS = {"wandb", "__pycache__", "node_modules"}


@dataclass
class Collection:
    """Every run folder found, and views of it.

    Attributes:
        all_runs: one row per run folder (complete, duplicate or partial), with the :data:`RESULT_FIELDS`, the
            derived columns of :func:`add_derived_columns`, and ``run_dir``, ``run_path`` (for display),
            ``status`` (``complete`` / ``partial``), ``kept`` (the complete run that represents its key),
            ``n_runs`` (complete runs sharing the key), ``duplicate_of`` (the kept run's path, for duplicates),
            ``superseded`` (a partial whose key also has a complete run), ``samples_done``, ``failed_done``,
            ``mtime``, ``finished`` (ISO time), ``overrides`` (Hydra's command-line overrides) and ``config_id``.
        sources: the input paths, as given.
        problems: files that could not be read, one line each.
    """

    all_runs: pd.DataFrame
    sources: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def runs(self) -> pd.DataFrame:
        """Complete runs, one per configuration key (the duplicate rule applied): what tables and figures use."""
        df = self.all_runs
        return df[(df["status"] == "complete") & df["kept"]].reset_index(drop=True)

    @property
    def partial(self) -> pd.DataFrame:
        """Run folders without ``metrics.json``: listed as missing, never used as results."""
        df = self.all_runs
        return df[df["status"] == "partial"].reset_index(drop=True)

    @property
    def duplicates(self) -> pd.DataFrame:
        """Complete runs that were not kept because a more recent run has the same key."""
        df = self.all_runs
        return df[(df["status"] == "complete") & ~df["kept"]].reset_index(drop=True)


def find_run_dirs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Folders under ``paths`` (recursively) that hold ``metrics.json`` or ``predictions.jsonl``.

    A path may also be one of those files itself. Hidden folders (``.hydra``, ``.git``) and ``wandb`` are not
    entered. Each folder appears once even when input paths overlap. Missing paths are logged and skipped.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            if path.name in (METRICS_FILE, PREDICTIONS_FILE):
                found.setdefault(path.parent.resolve(), None)
            else:
                logger.warning("%s is not a run folder nor a result file; skipped", path)
            continue
        if not path.is_dir():
            logger.warning("%s does not exist; skipped", path)
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
            if METRICS_FILE in filenames or PREDICTIONS_FILE in filenames:
                found.setdefault(Path(dirpath).resolve(), None)
    return sorted(found)


def read_predictions(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a run's ``predictions.jsonl`` (lines that do not parse, e.g. a cut last line, are skipped)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    records: list[dict[str, Any]] = []
    if not path.is_file():
        return records
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d does not parse; skipped", path, number)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def _count_predictions(run_dir: Path) -> tuple[int, int]:
    """(scored samples, failed samples) in ``predictions.jsonl``; ids seen twice count once (the last wins)."""
    by_id: dict[str, str] = {}
    for index, record in enumerate(read_predictions(run_dir)):
        by_id[str(record.get("id", f"#{index}"))] = str(record.get("status", "ok"))
    failed = sum(1 for status in by_id.values() if status == "failed")
    return len(by_id) - failed, failed


def _check_agreement(run_dir: Path, recorded: tuple[Any, Any], counted: tuple[int, int], problems: list[str]) -> None:
    """Warn when ``predictions.jsonl`` and ``metrics.json`` disagree on the samples (a file cut or edited later)."""
    done, failed = recorded
    if not isinstance(done, int) or counted == (done, failed if isinstance(failed, int) else counted[1]):
        return
    message = (
        f"{_display_path(run_dir)}: metrics.json counts {done} samples ({failed} failed) but {PREDICTIONS_FILE} "
        f"holds {counted[0]} ({counted[1]} failed): the predictions were cut or edited after the run; the report "
        "uses metrics.json"
    )
    problems.append(message)
    logger.warning(message)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def key_from_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Best-effort configuration key from a resolved Hydra config (``.hydra/config.yaml`` or metrics' ``config``).

    For each key field: a top-level scalar of that name; for the groups ``benchmark``, ``model``, ``pruner`` and
    ``quant``, the group's ``name``; else the shortest nested path that ends with the field's name (so
    ``quant.bits`` or ``compress.budget`` are found). ``benchmark_length`` is also read from ``benchmark.length``.
    Fields not found are absent from the result.
    """
    if not isinstance(config, Mapping):
        return {}
    flat = _flatten(config)
    key: dict[str, Any] = {}
    for name in KEY_FIELDS:
        value: Any = None
        top = config.get(name)
        if top is not None and not isinstance(top, Mapping):
            value = top
        elif isinstance(top, Mapping) and name in ("benchmark", "model", "pruner", "quant"):
            value = top.get("name", top.get("_name_"))
        else:
            endings = [f".{name}"] + ([".length"] if name == "benchmark_length" else [])
            candidates = sorted(
                (path for path in flat if any(path.endswith(e) for e in endings)),
                key=lambda p: (p.count("."), p),
            )
            if name == "benchmark_length":
                candidates = [
                    p for p in candidates if p.startswith("benchmark.") or p.endswith(".benchmark_length")
                ]
            for path in candidates:
                if flat[path] is not None and not isinstance(flat[path], list):
                    value = flat[path]
                    break
        if value is not None:
            key[name] = value
    return key


def _read_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with omegaconf
        return None
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with path.open(encoding="utf-8") as handle:
            return yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as error:
        logger.warning("cannot read %s: %s", path, error)
        return None


def _normalize(record: dict[str, Any]) -> dict[str, Any]:
    """Types of the contract: ints, floats, strings (or None) so that keys compare equal across machines."""
    out = dict(record)
    for name in _INT_FIELDS:
        value: Any = out.get(name)
        try:
            out[name] = None if labels.is_missing(value) or value == "" else int(float(value))
        except (TypeError, ValueError):
            out[name] = None
    for name in _FLOAT_FIELDS:
        value = out.get(name)
        try:
            out[name] = None if labels.is_missing(value) or value == "" else float(value)
        except (TypeError, ValueError):
            out[name] = None
    if out.get("budget") is not None:
        out["budget"] = float(f"{out['budget']:.12g}")
    for name in _STR_FIELDS:
        value = out.get(name)
        out[name] = None if labels.is_missing(value) or value in ("", "null", "None") else str(value)
    for name in _DICT_FIELDS:
        value = out.get(name)
        out[name] = dict(value) if isinstance(value, Mapping) else {}
    if out.get("compat") is None:
        out["compat"] = DEFAULT_COMPAT  # runs recorded before ``compat`` existed computed the methods' definitions
    return out


def config_id(record: Mapping[str, Any]) -> str:
    """A string form of the configuration key (equal for equal keys; None and NaN are the same)."""
    values = []
    for name in KEY_FIELDS:
        value = record.get(name)
        values.append(None if labels.is_missing(value) else value)
    return json.dumps(values)


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _benchmark_name(benchmark: Any, config: Any) -> Any:
    """The configured benchmark name when it refines the recorded one: the runner records the benchmark's family
    (``niah``) while the configuration says which variant ran (``niah_small``, ``ruler_8k``). A quick variant
    must not be compared with the paper, and a partial run (named from its configuration) must meet its twin."""
    group = config.get("benchmark") if isinstance(config, Mapping) else None
    name = group.get("name") if isinstance(group, Mapping) else None
    if not isinstance(name, str) or labels.is_missing(benchmark) or name == benchmark:
        return benchmark
    return name if labels.benchmark_family(name) == labels.benchmark_family(benchmark) else benchmark


def _read_run(run_dir: Path, problems: list[str]) -> dict[str, Any]:
    metrics_path = run_dir / METRICS_FILE
    predictions_path = run_dir / PREDICTIONS_FILE
    record: dict[str, Any] = {}
    status = "partial"
    metrics: dict[str, Any] = {}
    if metrics_path.is_file():
        try:
            with metrics_path.open(encoding="utf-8") as handle:
                metrics = json.load(handle)
            if not isinstance(metrics, dict):
                raise ValueError("not a JSON object")
            record = {name: metrics.get(name) for name in RESULT_FIELDS}
            status = "complete"
        except (OSError, ValueError) as error:
            metrics = {}
            problems.append(
                f"{_display_path(metrics_path)}: unreadable ({error}); the run is listed as partial"
            )
            logger.warning("cannot read %s: %s", metrics_path, error)
    # Key fields that metrics.json lacks (all of them, for a partial run) come from the resolved configuration:
    # metrics' own ``config``, else Hydra's ``.hydra/config.yaml`` (parsed only when needed: YAML is slow).
    hydra_config = None
    if status == "partial" or any(name not in metrics for name in KEY_FIELDS):
        config = record.get("config")
        if not isinstance(config, Mapping) or not config:
            hydra_config = _read_yaml(run_dir / HYDRA_CONFIG) if (run_dir / HYDRA_CONFIG).is_file() else None
            config = hydra_config
        for name, value in key_from_config(config).items():
            if record.get(name) is None:
                record[name] = value
    if status == "partial" and isinstance(hydra_config, Mapping):
        record["config"] = hydra_config
    record["benchmark"] = _benchmark_name(record.get("benchmark"), record.get("config"))
    overrides = None
    if status == "partial" and (run_dir / HYDRA_OVERRIDES).is_file():
        overrides = _read_yaml(run_dir / HYDRA_OVERRIDES)
    record = _normalize(record)
    if status == "complete":
        mtime = metrics_path.stat().st_mtime
        done = record.get("samples")
        failed_done = record.get("failed")
        if predictions_path.is_file():
            counted = _count_predictions(run_dir)
            if done is None:
                done, failed_done = counted
            else:
                _check_agreement(run_dir, (done, failed_done), counted, problems)
    else:
        mtime = predictions_path.stat().st_mtime if predictions_path.is_file() else 0.0
        done, failed_done = _count_predictions(run_dir)
    record.update(
        run_dir=str(run_dir),
        run_path=_display_path(run_dir),
        status=status,
        samples_done=done,
        failed_done=failed_done,
        mtime=mtime,
        finished=_dt.datetime.fromtimestamp(mtime).isoformat(timespec="seconds") if mtime else None,
        overrides=" ".join(str(o) for o in overrides) if isinstance(overrides, list) else None,
    )
    record["config_id"] = config_id(record)
    return record


def add_derived_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Columns computed from the contract's fields, used by tables and figures.

    ``family`` (benchmark family: ``niah_small`` -> ``niah``), ``setting`` (``4x4`` for 4 bits: the token multiple
    at equal memory), ``length_label`` (``8k``), ``compression`` (measured ``kv_bytes / kv_bytes_full``),
    ``variant`` (``base`` / ``instruct`` / ``other`` model), ``tokens_nominal`` (kept tokens as configured: the
    ``tokens`` asked for or the nominal count of the ``budget``; else the measured mean).
    """
    df = df.copy()
    df["family"] = [labels.benchmark_family(b) for b in df["benchmark"]]
    df["setting"] = [labels.setting_label(b) if not labels.is_missing(b) else None for b in df["bits"]]
    df["length_label"] = [
        labels.length_label(n) if not labels.is_missing(n) else _length_from_name(b)
        for n, b in zip(df["benchmark_length"], df["benchmark"])
    ]
    ratio = []
    for kv, full in zip(df["kv_bytes"], df["kv_bytes_full"]):
        ok = not labels.is_missing(kv) and not labels.is_missing(full) and float(full) > 0
        ratio.append(float(kv) / float(full) if ok else math.nan)
    df["compression"] = ratio
    df["variant"] = [labels.model_variant(m) for m in df["model"]]
    df["tokens_nominal"] = [_tokens_nominal(row) for _, row in df.iterrows()]
    return df


def _length_from_name(benchmark: Any) -> str | None:
    """``ruler_8k`` -> ``8k`` when a run did not record its length."""
    suffix = labels.benchmark_suffix(benchmark)
    return suffix if re.fullmatch(r"\d+k", suffix) else None


def _full_cache_tokens(config: Any) -> float | None:
    """The full cache that budget fractions refer to: ``full_cache_tokens``, else the model's context window."""
    if not isinstance(config, Mapping):
        return None
    value: Any = config.get("full_cache_tokens")
    if labels.is_missing(value) and isinstance(config.get("model"), Mapping):
        value = config["model"].get("context_window")
    try:
        return None if labels.is_missing(value) else float(value)
    except (TypeError, ValueError):
        return None


def _tokens_nominal(row: Any) -> float:
    """Kept tokens per layer as configured: ``tokens``, or the budget's nominal count (budget x full cache x
    16 / bits, the paper's accounting), else the measured mean ``tokens_effective``."""
    if not labels.is_missing(row.get("tokens")):
        return float(row["tokens"])
    budget, bits = row.get("budget"), row.get("bits")
    full = _full_cache_tokens(row.get("config"))
    mode = row.get("budget_mode")
    if (
        not labels.is_missing(budget)
        and not labels.is_missing(bits)
        and full
        and (labels.is_missing(mode) or mode == "nominal")
    ):
        return float(budget) * full * 16 / float(bits)
    effective = row.get("tokens_effective")
    return math.nan if labels.is_missing(effective) else float(effective)


def _empty_frame() -> pd.DataFrame:
    columns = [
        *RESULT_FIELDS,
        "run_dir",
        "run_path",
        "status",
        "samples_done",
        "failed_done",
        "mtime",
        "finished",
        "overrides",
        "config_id",
    ]
    return pd.DataFrame({name: pd.Series(dtype="object") for name in columns})


def collect_runs(paths: Iterable[str | os.PathLike[str]]) -> Collection:
    """Read every run folder under ``paths`` and apply the complete / partial / duplicate rules.

    Args:
        paths: folders (searched recursively) or result files.

    Returns:
        A :class:`Collection`; ``collection.runs`` is what tables and figures use.
    """
    sources = [str(p) for p in paths]
    problems: list[str] = []
    records = [_read_run(run_dir, problems) for run_dir in find_run_dirs(sources)]
    df = pd.DataFrame.from_records(records) if records else _empty_frame()
    for name in RESULT_FIELDS:
        if name not in df.columns:
            df[name] = None
    df = add_derived_columns(df)
    df["kept"] = False
    df["n_runs"] = 0
    df["duplicate_of"] = None
    df["superseded"] = False
    complete = df[df["status"] == "complete"].sort_values(["mtime", "run_dir"], ascending=[False, True])
    for _, group in complete.groupby("config_id", sort=False):
        kept = group.index[0]
        df.loc[kept, "kept"] = True
        df.loc[group.index, "n_runs"] = len(group)
        if len(group) > 1:
            df.loc[group.index[1:], "duplicate_of"] = df.loc[kept, "run_path"]
            logger.info(
                "%d complete runs share the key of %s: kept the most recent, %d listed as duplicates",
                len(group),
                df.loc[kept, "run_path"],
                len(group) - 1,
            )
    complete_ids = set(complete["config_id"])
    partial = df["status"] == "partial"
    df.loc[partial, "superseded"] = df.loc[partial, "config_id"].isin(complete_ids)
    df = df.sort_values(["status", "run_path"]).reset_index(drop=True)
    logger.info(
        "%d run folders: %d complete (%d kept, %d duplicates), %d partial",
        len(df),
        int((df["status"] == "complete").sum()),
        int(df["kept"].sum()),
        int(((df["status"] == "complete") & ~df["kept"]).sum()),
        int(partial.sum()),
    )
    return Collection(all_runs=df, sources=sources, problems=problems)
