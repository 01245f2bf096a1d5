"""The Hydra application: everything that reads a composed configuration (``conf/``) and builds the library's
objects from it. The library below (:class:`~qpruning.runner.Runner`, the compressor, benchmarks, models,
``qpruning.optimize``'s search) takes plain Python values and does not import Hydra or OmegaConf.

- :func:`runner_from_config` / :func:`run_job`: ``python run.py`` / ``qpruning run`` (one job);
- :func:`summary_line`: the line each job prints (the grouped launcher of ``python run.py -m``,
  :mod:`qpruning.launcher`, prints it too);
- :func:`optimize_setup` / :func:`run_optimize_job`: ``qpruning optimize``;
- :func:`register_resolvers`: the ``qp.*`` resolvers that name run folders;
- :func:`build` and the checks of a composed configuration that no single dataclass owns (``tokens`` typed over
  the default ``budget``, an allocation beside a typed ``tokens`` or ``budget``), with instantiation that
  reports the user's mistake rather than Hydra's wrapper around it. The dataclasses (quantizers, pruners,
  :class:`~qpruning.compressor.KVCompressor`, benchmarks, :class:`~qpruning.models.ModelSpec`) validate their own
  fields in ``__post_init__``; every key's type is declared once, in :mod:`qpruning.schema`'s terms.

An allocation file (``allocation=...``) is read here and turned into a plain per-layer configuration
(:class:`~qpruning.optimize.allocation.LayerConfiguration`) before the runner sees it.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from qpruning.compat import paper_sinks, paper_window
from qpruning.compressor import KVCompressor
from qpruning.errors import ConfigError, UserError, check_int, check_real, check_seed, is_real
from qpruning.identity import DEFAULT_COMPAT, RUN_CONTROL_KEYS, RunLabels, budget_label, run_hash
from qpruning.loggers import NullLogger
from qpruning.optimize.allocation import Allocation, Geometry, Precision
from qpruning.optimize.driver import OptimizeSetup, run_optimize, tier_space
from qpruning.optimize.subsets import BenchmarkSubset
from qpruning.optimize.tiers import check_search, check_tier_bits, grid_steps
from qpruning.runner import Runner

logger = logging.getLogger(__name__)

# -- checks and instantiation ---------------------------------------------------------------------------

DEFAULT_BUDGET_KEY = "default_budget"


def build(cfg: Any, key: str) -> Any:
    """``hydra.utils.instantiate(cfg[key])``; a mistake in its fields raises the :class:`UserError` itself."""
    node = cfg[key]
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and OmegaConf.is_dict(node) and "_target_" in node:
            target = get_object(node._target_)
            accepted = [p for p in inspect.signature(target).parameters if p not in ("self", "args", "kwargs")]
            unknown = [k for k in node if k != "_target_" and k not in accepted]
            if unknown:
                raise ConfigError(
                    f"{key}.{unknown[0]} is not a parameter of {key}={node.get('name', target.__name__)}",
                    f"allowed: {', '.join(accepted)}",
                ) from None
            raise ConfigError(f"{key}: {cause}", f"allowed: the parameters {', '.join(accepted)}") from None
        raise


def tokens_and_budget(cfg: Any) -> tuple[Any, Any]:
    """The ``tokens`` and ``budget`` a run uses: whichever of the two the user typed wins over the default.

    ``conf/config.yaml`` sets ``budget: ${default_budget}``. While ``budget`` is still that interpolation, the
    user did not type it (nor did an experiment file), so a typed ``tokens=512`` replaces it. A typed
    ``budget=...`` (or one from an experiment) is a plain value: with ``tokens`` as well it is an error, raised by
    :class:`~qpruning.compressor.KVCompressor`.
    """
    tokens, budget = cfg.get("tokens"), cfg.get("budget")
    if tokens is not None and budget_is_default(cfg):
        budget = None
    return tokens, budget


def budget_is_default(cfg: Any) -> bool:
    """Whether ``budget`` is still ``${default_budget}`` (not typed by the user or an experiment)."""
    if "budget" not in cfg or not OmegaConf.is_interpolation(cfg, "budget"):
        return False
    return str(cfg._get_node("budget")._value()).replace(" ", "") == "${" + DEFAULT_BUDGET_KEY + "}"


def check_allocation_conflicts(cfg: Any, allocation: str, allocation_budget: float | None) -> None:
    """An allocation file sets every layer's bits and tokens (and names its budget): a typed ``tokens=``, or a typed
    ``budget=`` other than the file's, would be a label that the run does not follow. Refused, not overridden
    (``layers=`` beside it: :func:`qpruning.schema.check_values`)."""
    tokens, budget = cfg.get("tokens"), cfg.get("budget")
    if tokens is not None:
        raise ConfigError(f"tokens={tokens} beside allocation={allocation}: the allocation sets every layer's tokens",
                          "allowed: one of them (tokens= without an allocation, or the allocation alone)")
    typed = budget is not None and not budget_is_default(cfg)
    if typed and is_real(budget) and allocation_budget is not None and not math.isclose(budget, allocation_budget, rel_tol=1e-9):
        raise ConfigError(f"budget={budget} beside allocation={allocation}, which was made for "
                          f"budget={allocation_budget}", f"allowed: budget={allocation_budget} or no budget= (the "
                          "allocation's), or an allocation made for this budget (qpruning optimize)")


# -- python run.py --------------------------------------------------------------------------------------

def resolved_config(root) -> dict[str, Any]:
    """The identity-relevant part of an OmegaConf config, resolved, without touching run-control keys (``run_name``
    interpolates the hash itself)."""
    out: dict[str, Any] = {}
    for key in root.keys():
        if key in RUN_CONTROL_KEYS:
            continue
        value = root[key]
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def register_resolvers() -> None:
    """OmegaConf resolvers used in ``conf/`` to name run folders (idempotent)."""
    def folder_hash(*, _root_):
        return run_hash(resolved_config(_root_))

    if not OmegaConf.has_resolver("qp.budget"):
        OmegaConf.register_new_resolver("qp.budget", budget_label)
    if not OmegaConf.has_resolver("qp.hash"):
        OmegaConf.register_new_resolver("qp.hash", folder_hash)
    if not OmegaConf.has_resolver("qp.paper_window"):
        OmegaConf.register_new_resolver("qp.paper_window", paper_window)
    if not OmegaConf.has_resolver("qp.paper_sinks"):
        OmegaConf.register_new_resolver("qp.paper_sinks", paper_sinks)
    if not OmegaConf.has_resolver("qp.compat"):  # "-paper" in folder names; nothing for the default mode
        OmegaConf.register_new_resolver("qp.compat", lambda mode: "" if mode in (None, DEFAULT_COMPAT) else f"-{mode}")
    if not OmegaConf.has_resolver("qp.suffix"):
        OmegaConf.register_new_resolver("qp.suffix", lambda value: "" if value in (None, "") else f"-{value}")


def compressor_from_config(cfg, spec, **fields) -> KVCompressor:
    """The :class:`KVCompressor` of a composed configuration (``conf/config.yaml`` or ``conf/optimize.yaml``) for the
    model ``spec``: its ``pruner`` and ``quant`` (unless given), the keys every compressor reads, and ``fields``."""
    if "pruner" not in fields:
        fields["pruner"] = build(cfg, "pruner")
    if "quantizer" not in fields:
        fields["quantizer"] = build(cfg, "quant")
    return KVCompressor(
        full_cache_tokens=spec.context_window if cfg.full_cache_tokens is None else cfg.full_cache_tokens,
        storage_dtype=cfg.get("storage_dtype"),
        kernel=cfg.get("kernel", "auto"),
        compat=cfg.get("compat", "methods"),
        sliding=cfg.get("sliding", "keep"),
        **fields,
    )


def plain(cfg, resolve: bool = True) -> dict[str, Any]:
    """A mapping config (a ``DictConfig``) as a plain dict (``OmegaConf.to_container`` types any container)."""
    return cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=resolve))


def runner_from_config(cfg, output_dir: str | Path) -> Runner:
    """Build a :class:`Runner` from a composed Hydra config (``conf/config.yaml``)."""
    container = plain(cfg)
    model = build(cfg, "model")
    pruner = build(cfg, "pruner")
    quantizer = build(cfg, "quant")
    benchmark = build(cfg, "benchmark")
    layers = container.get("layers") or []
    tokens, budget = tokens_and_budget(cfg)  # a typed tokens= wins over the default budget
    layer_config = cfg.get("layer_config")
    allocation = cfg.get("allocation")
    if allocation:
        found = Allocation.from_yaml(Path(allocation)).configuration()  # the run sees a plain configuration
        check_allocation_conflicts(cfg, allocation, found.budget)
        layers = found.layers  # every layer's bits and tokens
        layer_config = layer_config or found.name
        if found.budget is not None:
            budget = found.budget
    container["tokens"], container["budget"] = tokens, budget
    compressor = compressor_from_config(cfg, model, pruner=pruner, quantizer=quantizer, tokens=tokens, budget=budget,
                                        budget_mode=cfg.budget_mode, layers=layers, every_layer=bool(allocation))
    labels = RunLabels.of(benchmark, model, compressor, pruner=pruner, quantizer=quantizer, layer_config=layer_config,
                          experiment=cfg.get("experiment_name"), benchmark_variant=cfg.benchmark.name)
    run_logger = build(cfg, "logger") if cfg.get("logger") else NullLogger()
    return Runner(
        model=model,
        compressor=compressor,
        benchmark=benchmark,
        labels=labels,
        output_dir=Path(output_dir),
        limit=cfg.limit,
        seed=cfg.seed,
        config=container,
        run_logger=run_logger,
    )


def job_runner(cfg) -> Runner:
    """The :class:`Runner` of the Hydra job in progress (its folder: the job's output directory)."""
    return runner_from_config(cfg, Path(HydraConfig.get().runtime.output_dir))


def run_job(cfg) -> float | None:
    """What ``run.py`` does for one Hydra job: build, validate, run, print a short summary."""
    runner = job_runner(cfg)
    metrics = runner.run()  # a locked folder or a failed write is a UserError: one line (qpruning.entry)
    print(summary_line(metrics, runner.output_dir), flush=True)
    return metrics.get("score")


def summary_line(metrics: dict[str, Any], output_dir: Path) -> str:
    """One human-readable line per run."""
    budget = budget_label(metrics.get("tokens"), metrics.get("budget"), metrics.get("budget_mode", "nominal"))
    ratio = metrics.get("kv_ratio")
    score = metrics.get("score")
    global_ratio = metrics.get("kv_ratio_global")
    tiers = f" tiers {metrics['tiers']}" if metrics.get("tiers") else ""
    # a hybrid model: the global layers' ratio is the one the budget sets; the whole cache holds the windows too
    globals_only = (f" (global layers {100 * global_ratio:.1f}%)"
                    if global_ratio is not None and ratio is not None and abs(global_ratio - ratio) > 1e-9 else "")
    return (
        f"[qpruning] {metrics['benchmark']} | {metrics['model']} | {metrics['pruner']} + {metrics['quant']} "
        f"{metrics['bits']}-bit g{metrics['group_size']}{tiers} {budget} | score {score:.2f}"
        if score is not None
        else f"[qpruning] {metrics['benchmark']} | {metrics['model']} | score n/a"
    ) + (
        f" | kept {metrics['tokens_effective']:.0f} tokens | KV {100 * ratio:.1f}% of 16-bit{globals_only}"
        if ratio is not None and metrics.get("tokens_effective") is not None
        else ""
    ) + f" | {metrics['samples']} samples ({metrics['failed']} failed) in {metrics['seconds']:.0f}s -> {output_dir}"


# -- qpruning optimize -----------------------------------------------------------------------------------

def _subsets(cfg, key: str, *, required: bool) -> list[BenchmarkSubset]:
    allowed = "allowed: a list of {name: niah|ruler|..., fields: {...}}" + ("" if required else " (or [])")
    entries = OmegaConf.to_container(cfg[key], resolve=True) if cfg.get(key) is not None else []
    if not isinstance(entries, list) or (required and not entries):
        raise ConfigError(f"{key}={entries!r} is not a non-empty list of benchmark subsets", allowed)
    subsets = []
    for entry in entries:
        if not isinstance(entry, dict) or "name" not in entry or not isinstance(entry.get("fields") or {}, dict):
            raise ConfigError(f"{key} entry {entry!r} is not a benchmark subset", allowed)
        subsets.append(BenchmarkSubset(entry["name"], dict(entry.get("fields") or {})))
    return subsets


def optimize_setup(cfg) -> OptimizeSetup:
    """Build and check the optimize configuration (``conf/optimize.yaml``) without weights; raises
    :class:`~qpruning.errors.UserError` on any mistake (budget, bits_choices, groups, max_evaluations...)."""
    from qpruning.cache.quantizers import ALLOWED_BITS

    spec = build(cfg, "model")
    search = check_search(cfg.get("search"))
    tier_bits, _ = check_tier_bits(plain_value(cfg.get("tier_bits"))), grid_steps(cfg.get("tier_step"))
    if cfg.get("budget") is None:
        raise ConfigError("budget=null: the search needs a budget", "allowed: a fraction in (0, 1], e.g. 0.03125")
    pruner = build(cfg, "pruner")
    if search == "tiers" and not pruner.prunes:
        raise ConfigError("search=tiers ranks the kept tokens by the pruner's scores, and pruner=none scores none",
                          "allowed: search=tiers with a pruner (e.g. pruner=snapkv), or search=layers")
    base = compressor_from_config(cfg, spec, pruner=pruner, budget=cfg.budget, budget_mode="exact")
    if base.quantizer.tier_plan:
        raise ConfigError(f"quant.tiers is set ({base.quantizer.tiers_label}), and the search chooses the "
                          + ("tiers itself" if search == "tiers" else "bits of every layer group"),
                          "allowed: quant.tiers=null (search=tiers searches the tiers' shares)")
    choices = cfg.get("bits_choices")
    choices = list(choices) if OmegaConf.is_list(choices) else choices
    if not isinstance(choices, list):
        raise ConfigError(f"bits_choices={choices!r} is not a list", "allowed: a list of 2, 4, 8, 16, e.g. [4,8,16]")
    precisions = []
    for choice in choices:
        try:
            precisions.append(Precision.parse(choice))
        except ConfigError as exc:
            raise ConfigError(f"bits_choices={choices}: {exc.what}", "allowed: distinct values of "
                              f"{', '.join(map(str, ALLOWED_BITS))} (or 2r, 4r, 8r: rotated), e.g. [4,8,16]") from None
    if not choices or len(set(choices)) != len(choices):
        raise ConfigError(f"bits_choices={choices} is empty or repeats a value",
                          "allowed: distinct values of 2, 4, 8, 16 (or 2r, 4r, 8r: rotated), e.g. [4,8,16]")
    check_int("groups", cfg.get("groups"), minimum=1, meaning="contiguous layer groups")
    check_int("max_evaluations", cfg.get("max_evaluations"), minimum=1)
    check_real("transfer_fraction", cfg.get("transfer_fraction"), low=0.0, high=1.0)
    check_seed("seed", cfg.get("seed"))
    model_config = spec.load_config()
    layers = getattr(model_config, "num_hidden_layers", None)
    if layers is not None and cfg.groups > layers:
        raise ConfigError(f"groups={cfg.groups} is more than the model's {layers} layers",
                          f"allowed: 1 to {layers}")
    base.plan(model_config)
    if search == "tiers":
        _check_tier_search(base, model_config, tier_bits, cfg.tier_step)
    for precision in precisions:  # a rotated choice needs a quantizer that rotates and a head_dim it can rotate
        if precision.rotate:
            quantizer = base.quantizer.with_bits(precision.bits).with_rotate(True)
            quantizer.validate_head_dim(Geometry.from_config(model_config).head_dim)
    calibration = _subsets(cfg, "calibration", required=True)
    heldout = _subsets(cfg, "heldout", required=False)
    for subset in calibration + heldout:
        subset.build().validate(spec.context_window)
    return OptimizeSetup(spec, base, model_config, calibration, heldout)


def plain_value(value: Any) -> Any:
    """A list config value as a plain list (anything else as it is)."""
    return list(value) if OmegaConf.is_list(value) else value


def _check_tier_search(base: KVCompressor, model_config, tier_bits: tuple[int, ...], tier_step: float) -> None:
    """search=tiers: some uniform state fits the budget, and the compressor takes the tiers (every bit width)."""
    space = tier_space(model_config, base, tier_bits, tier_step)
    uniform = space.uniform_states()
    if not uniform:
        raise ConfigError(f"budget={base.budget:g} keeps fewer than {base.pruner.name}'s window of "
                          f"{base.pruner.min_tokens()} tokens at every bit width of tier_bits={list(tier_bits)}",
                          "allowed: a larger budget, lower tier_bits, or a smaller pruner.window")
    for state in uniform.values():
        space.allocation(state).compressor(base).plan(model_config)


def optimize_overrides() -> tuple[str, ...]:
    """The job's ``model.*``, ``pruner.*`` and ``quant.*`` overrides, which a run needs to do as the search did."""
    overrides = HydraConfig.get().overrides.task
    return tuple(o for o in overrides if o.lstrip("+~").split("=", 1)[0].startswith(("model.", "pruner.", "quant.")))


def run_optimize_job(cfg) -> float:
    """What ``qpruning optimize`` does with its Hydra config (``conf/optimize.yaml``)."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    setup = optimize_setup(cfg)  # every check, before any weights
    return run_optimize(
        setup, output_dir, groups=cfg.groups, bits_choices=tuple(cfg.bits_choices),
        transfer_fraction=cfg.transfer_fraction, max_evaluations=cfg.max_evaluations, seed=cfg.seed,
        search=cfg.search, tier_bits=tuple(cfg.tier_bits), tier_step=cfg.tier_step,
        run_overrides=optimize_overrides(),
    )
