"""``qpruning optimize``: find a per-layer token-precision allocation for a model, a budget and a pruner.

Steps, all resumable (a rerun skips what is on disk):

1. calibration prompts (NIAH and RULER samples generated locally, or any benchmark subset) are prefilled once and
   recorded, with the uncompressed model's greedy answers;
2. :func:`~qpruning.optimize.search.greedy_search` looks for the allocation that minimizes the answers'
   cross-entropy through the compressed cache, every evaluation cached in ``evaluations.jsonl``;
3. the best allocation is written as ``allocation.yaml`` (usable by any run: ``allocation=path``), with plots of
   the allocation and of the search;
4. held-out samples (other NIAH cells, other RULER samples: never the calibration ones) are run with real
   generation for the found allocation and the three uniform points, and compared in ``comparison.md``.

``search=tiers`` runs the same steps over the shares of precision per token (:mod:`qpruning.optimize.tiers`):
``tiers.yaml`` in place of ``allocation.yaml``, the uniform states of ``tier_bits`` in the comparison.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qpruning.compressor import KVCompressor
from qpruning.optimize.allocation import Allocation, Geometry, layer_groups
from qpruning.optimize.calibration import (
    RecordedPrompt,
    answer_cross_entropy,
    record_prefill,
    reference_answer,
)
from qpruning.optimize.search import EvaluationCache, SearchResult, SearchSpace, Space, greedy_search
from qpruning.optimize.subsets import BenchmarkSubset
from qpruning.optimize.tiers import TierSpace, run_command

logger = logging.getLogger(__name__)


def calibration_prompts(model, tokenizer, subsets: list[BenchmarkSubset], context_window: int, chat_template: bool):
    """Recorded prefills and reference answers of every sample of ``subsets``."""
    prompts = []
    for subset in subsets:
        bench = subset.build()
        bench.validate(context_window)
        for sample in bench.samples(tokenizer):
            ids = bench.encode(sample, tokenizer, bench.max_input_tokens(sample, context_window), chat_template)
            input_ids = torch.tensor([ids])
            kwargs = dict(bench.generation_kwargs(sample, tokenizer))
            kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
            answer = reference_answer(model, input_ids, kwargs)
            layers = record_prefill(model, input_ids)
            prompts.append(RecordedPrompt(f"{subset.name}:{sample.id}", input_ids, layers, answer))
            logger.info("calibration prompt %s: %d tokens, answer %r", sample.id, len(ids),
                        tokenizer.decode(answer, skip_special_tokens=True))
    return prompts


def make_objective(model, base: KVCompressor, prompts: list[RecordedPrompt]):
    """The search's objective: mean answer cross-entropy over the prompts, and the largest measured cache."""

    def objective(allocation: Allocation):
        compressor = allocation.compressor(base)  # the base with only the allocation (or tiering) changed
        values, measured = [], 0
        for prompt in prompts:
            value, summary = answer_cross_entropy(model, compressor, prompt)
            values.append(value)
            measured = max(measured, summary["kv_bytes"])
        return sum(values) / len(values), measured, values

    return objective


def _search_terms(base: KVCompressor) -> tuple[float, int]:
    """The budget and the full cache the search works in: both set once :func:`qpruning.app.optimize_setup` has
    built ``base`` (it rejects budget=null and defaults the full cache to the model's context window)."""
    if base.budget is None or base.full_cache_tokens is None:
        raise ValueError("the search needs a compressor with a budget and a full cache size")
    return base.budget, base.full_cache_tokens


def tier_space(model_config, base: KVCompressor, tier_bits: tuple[int, ...], tier_step: float) -> TierSpace:
    """The tier search's space (search=tiers) for a model and the base compressor."""
    return TierSpace(Geometry.from_config(model_config), base.quantizer, *_search_terms(base), tier_bits=tier_bits,
                     tier_step=tier_step, min_tokens=base.pruner.min_tokens())


def optimize(
    model,
    tokenizer,
    model_name: str,
    model_config,
    base: KVCompressor,
    calibration: list[BenchmarkSubset],
    output_dir: Path,
    context_window: int,
    chat_template: bool = True,
    groups: int = 6,
    bits_choices: tuple[int | str, ...] = (4, 8, 16),
    transfer_fraction: float = 0.25,
    max_evaluations: int = 60,
    seed: int = 0,
    search: str = "layers",
    tier_bits: tuple[int, ...] = (8, 4, 2),
    tier_step: float = 0.1,
    run_overrides: tuple[str, ...] = (),
) -> SearchResult:
    """Run the search and write ``allocation.yaml`` (search=tiers: ``tiers.yaml``), ``search.json`` and the plots
    into ``output_dir``. ``run_overrides``: the search's ``pruner.*``/``quant.*``/``model.*`` overrides, for the
    command line in ``tiers.yaml``'s header."""
    from qpruning.optimize import plots

    output_dir.mkdir(parents=True, exist_ok=True)
    geometry = Geometry.from_config(model_config)
    started = time.time()
    prompts = calibration_prompts(model, tokenizer, calibration, context_window, chat_template)
    budget, full_tokens = _search_terms(base)
    cache = EvaluationCache(output_dir / "evaluations.jsonl")
    objective = make_objective(model, base, prompts)
    if search == "tiers":
        tiers = tier_space(model_config, base, tier_bits, tier_step)
        tiered = greedy_search(tiers, objective, cache, max_evaluations, seed)
        _describe_best(tiered, tiers, model_name, base, seed)
        tiered.best.meta["tokens"] = tiered.best.tokens
        tiered.best.name = f"opt-tiers-{base.pruner.name}-b{base.budget:g}"
        command = run_command(tiered.best, base, model_name, run_overrides)
        tiered.best.to_yaml(output_dir / "tiers.yaml", _header(model_name, base, "qpruning optimize search=tiers") + "\n"
                            f"# Use it in any run: {command}")
        _write_summary(tiered, tiers, prompts, started, output_dir, model_name, base, search="tiers")
        plots.search_plot(tiered, output_dir / "search.png", model_name, budget)
        return tiered
    space = SearchSpace(
        geometry=geometry,
        quantizer=base.quantizer,
        groups=layer_groups(geometry.num_layers, groups),
        budget=budget,
        full_tokens=full_tokens,
        max_tokens=max(p.length for p in prompts),
        bits_choices=tuple(bits_choices),
        transfer_fraction=transfer_fraction,
        min_tokens=base.pruner.min_tokens(),
    )
    result = greedy_search(space, objective, cache, max_evaluations, seed)
    _describe_best(result, space, model_name, base, seed)
    result.best.name = f"opt-{base.pruner.name}-b{base.budget:g}"
    header = _header(model_name, base) + (
        f"\n# Use it in any run: python run.py model={model_name} allocation={output_dir / 'allocation.yaml'}"
    )
    result.best.to_yaml(output_dir / "allocation.yaml", header)
    _write_summary(result, space, prompts, started, output_dir, model_name, base)
    plots.allocation_plot(result, space, output_dir / "allocation.png", model_name)
    plots.search_plot(result, output_dir / "search.png", model_name, budget)
    return result


def _describe_best(result: SearchResult, space: Space, model_name: str, base: KVCompressor, seed: int) -> None:
    """The found allocation's (or tiering's) ``meta``: what it was found for, its bytes and its objective."""
    result.best.meta = {
        "model": model_name,
        "pruner": base.pruner.name,
        "quant": base.quantizer.name,
        "group_size": base.quantizer.group_size,
        "budget": base.budget,
        "full_cache_tokens": base.full_cache_tokens,
        "bytes": space.nbytes(result.best),
        "budget_bytes": int(space.budget_bytes),
        "objective": result.best_evaluation.objective,
        "seed": seed,
    }


def _header(model_name: str, base: KVCompressor, command: str = "qpruning optimize") -> str:
    return (
        f"# Found by `{command}` for {model_name}, {base.pruner.name} + {base.quantizer.name} "
        f"g{base.quantizer.group_size}, budget {base.budget:g} of a {base.full_cache_tokens}-token 16-bit cache."
    )


def _write_summary(result: SearchResult, space: Space, prompts: list[RecordedPrompt], started: float,
                   output_dir: Path, model_name: str, base: KVCompressor, search: str = "layers") -> None:
    """``search.json`` (search=tiers: its ``search`` and the found ``tiers`` too) and the closing log line."""
    best: dict[str, Any] = {"objective": result.best_evaluation.objective, "allocation": result.best.describe(),
                            "bytes": result.best.meta["bytes"]}
    if search != "layers":
        best["tiers"] = result.best.tiers()
    summary: dict[str, Any] = {
        "model": model_name,
        "budget": base.budget,
        "budget_bytes": space.budget_bytes,
        "evaluations": len(result.history),
        "seconds": round(time.time() - started, 1),
        "calibration_prompts": [p.sample_id for p in prompts],
        "uniform": {label: e.objective for label, e in result.uniform.items()},
        "best": best,
        "history": [vars(e) for e in result.history],
    }
    if search != "layers":
        summary = {"search": search, **summary}
    (output_dir / "search.json").write_text(json.dumps(summary, indent=2))
    logger.info("best %s (objective %.4f, %d bytes of %d): %s", "allocation" if search == "layers" else "tiering",
                result.best_evaluation.objective, result.best.meta["bytes"], int(space.budget_bytes),
                result.best.describe())


@dataclass
class OptimizeSetup:
    """Everything ``qpruning optimize`` checks before loading weights (built by :func:`qpruning.app.optimize_setup`)."""

    spec: Any
    base: KVCompressor
    model_config: Any
    calibration: list[BenchmarkSubset]
    heldout: list[BenchmarkSubset]


def run_optimize(
    setup: OptimizeSetup,
    output_dir: Path,
    *,
    groups: int,
    bits_choices: tuple[int | str, ...],
    transfer_fraction: float,
    max_evaluations: int,
    seed: int,
    search: str = "layers",
    tier_bits: tuple[int, ...] = (8, 4, 2),
    tier_step: float = 0.1,
    run_overrides: tuple[str, ...] = (),
) -> float:
    """``qpruning optimize`` after its checks (:class:`OptimizeSetup`): load the weights, search, compare on the
    held-out subsets, print a summary. Returns the best objective."""
    from qpruning.optimize.heldout import heldout_comparison

    spec, base, model_config = setup.spec, setup.base, setup.model_config
    calibration, heldout = setup.calibration, setup.heldout
    model, tokenizer = spec.load()
    torch.manual_seed(seed)
    result = optimize(
        model, tokenizer, spec.name, model_config, base, calibration, output_dir, spec.context_window,
        chat_template=spec.chat_template, groups=groups, bits_choices=bits_choices,
        transfer_fraction=transfer_fraction, max_evaluations=max_evaluations, seed=seed, search=search,
        tier_bits=tier_bits, tier_step=tier_step, run_overrides=run_overrides,
    )
    found = output_dir / ("tiers.yaml" if search == "tiers" else "allocation.yaml")
    if heldout and search == "tiers":
        tiers = tier_space(model_config, base, tier_bits, tier_step)
        tierings: dict[str, Any] = {f"uniform-{label}": tiers.allocation(state, f"uniform-{label}")
                                    for label, state in tiers.uniform_states().items()}
        tierings["optimized"] = result.best
        table = heldout_comparison(spec, (model, tokenizer), base, tierings, heldout, output_dir, found="tiering")
        print(table.round(1).to_string(), flush=True)
    elif heldout:
        geometry = Geometry.from_config(model_config)
        space = SearchSpace(geometry, base.quantizer, layer_groups(geometry.num_layers, groups),
                            *_search_terms(base), max_tokens=spec.context_window,
                            bits_choices=bits_choices)
        allocations = {f"uniform-{label}": space.allocation(state, f"uniform-{label}")
                       for label, state in space.uniform_states().items()}
        allocations["optimized"] = result.best
        table = heldout_comparison(spec, (model, tokenizer), base, allocations, heldout, output_dir)
        print(table.round(1).to_string(), flush=True)
    print(f"[qpruning optimize] {spec.name} budget {base.budget:g}: {result.best.describe()} "
          f"(objective {result.best_evaluation.objective:.4f}; uniform "
          + ", ".join(f"{k} {v.objective:.4f}" for k, v in result.uniform.items())
          + f") -> {found}", flush=True)
    return result.best_evaluation.objective
