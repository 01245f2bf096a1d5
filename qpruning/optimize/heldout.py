"""The found allocation against the uniform 1x16 / 2x8 / 4x4 points, on held-out samples, with real generation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from qpruning.compressor import KVCompressor
from qpruning.identity import RunLabels
from qpruning.models import ModelSpec
from qpruning.optimize.search import Candidate
from qpruning.optimize.subsets import BenchmarkSubset
from qpruning.runner import Runner

logger = logging.getLogger(__name__)


def heldout_comparison(
    spec: ModelSpec,
    loaded,
    base: KVCompressor,
    allocations: Mapping[str, Candidate],
    subsets: list[BenchmarkSubset],
    output_dir: Path,
    found: str = "allocation",
) -> pd.DataFrame:
    """Run every allocation (search=tiers: every tiering, ``found="tiering"``) on every held-out subset
    (resumable run folders under ``output_dir/heldout``) and write ``comparison.csv``, ``comparison.md`` and
    ``comparison.png``. Returns the score table."""
    from qpruning.optimize import plots

    scores: dict[str, dict[str, float]] = {}
    kv: dict[str, float] = {}
    for label, allocation in allocations.items():
        compressor = allocation.compressor(base)  # the base with only the allocation (or tiering) changed
        for subset in subsets:
            bench = subset.build()
            runner = Runner(
                model=spec,
                compressor=compressor,
                benchmark=bench,
                labels=RunLabels.of(bench, spec, compressor, layer_config=label, experiment="optimize",
                                    benchmark_variant=subset.name),
                output_dir=output_dir / "heldout" / label / subset.name,
                preloaded=loaded,
            )
            metrics = runner.run()
            scores.setdefault(label, {})[subset.name] = metrics["score"]
            kv[label] = metrics["kv_bytes"]
    table = pd.DataFrame(scores).T
    table["mean"] = table.mean(axis=1)
    table.to_csv(output_dir / "comparison.csv")
    best_uniform = table.drop(index=[k for k in table.index if not k.startswith("uniform")])["mean"].max()
    lines = [
        f"# Held-out comparison: {spec.name}, {base.pruner.name} + {base.quantizer.name}, budget {base.budget:g}",
        "",
        f"Scores (0-100) on held-out samples, never used by the search. Uniform points and the optimized {found} "
        "spend the same budget in exact byte accounting (scales, zeros and 16-bit tails counted).",
        "",
        "| configuration | " + " | ".join(table.columns) + " | KV bytes |",
        "|---|" + "---|" * (len(table.columns) + 1),
    ]
    for label, row in table.iterrows():
        cells = " | ".join(f"{v:.1f}" for v in row.tolist())
        lines.append(f"| {label} | {cells} | {kv[label]:,.0f} |")
    optimized = table.loc[[k for k in table.index if not k.startswith("uniform")], "mean"]
    verdict = "matches or beats" if (optimized >= best_uniform - 1e-9).all() else "does NOT beat"
    lines += ["", f"The optimized {found} {verdict} the best uniform point on the held-out mean "
              f"({optimized.iloc[0]:.1f} vs {best_uniform:.1f})."]
    (output_dir / "comparison.md").write_text("\n".join(lines) + "\n")
    plots.comparison_plot(table.drop(columns=["mean"]), output_dir / "comparison.png",
                          f"Held-out: {spec.name}, budget {base.budget:g}")
    return table
