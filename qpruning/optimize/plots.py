"""Plots of a search: the allocation per layer, the objective over the search, and the held-out comparison."""

from __future__ import annotations

from pathlib import Path

BITS_COLORS = {2: "#d62728", 4: "#1f77b4", 8: "#ff7f0e", 16: "#2ca02c"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def allocation_plot(result, space, path: Path, model_name: str) -> None:
    """Kept tokens per layer, coloured by bits, beside the uniform 4x4 point; bytes per layer below."""
    plt = _pyplot()
    best = result.best.per_layer()
    layers = list(range(len(best)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    turned = [bool(g.rotate) for g in result.best.groups for _ in range(g.size)]  # rotated layers are hatched
    for bits, rotate in sorted({(b, r) for (b, _), r in zip(best, turned)}):
        xs = [i for i, ((b, _), r) in enumerate(zip(best, turned)) if (b, r) == (bits, rotate)]
        top.bar(xs, [best[i][1] for i in xs], color=BITS_COLORS.get(bits, "grey"), hatch="//" if rotate else None,
                label=f"{bits}-bit" + (" rotated" if rotate else ""))
    for label, state in space.uniform_states().items():
        tokens = space.allocation(state).groups[0].tokens
        top.axhline(tokens, linestyle="--", linewidth=1, color="grey")
        top.text(len(best) - 0.5, tokens, f" uniform {label}", va="center", fontsize=8, color="dimgrey")
    top.set_ylabel("kept tokens per KV head")
    top.set_title(f"Optimized allocation: {model_name}, budget {space.budget:g}")
    top.legend(title="precision", fontsize=9, loc="upper left")
    per_layer_bytes = []
    for bits, tokens in best:
        from qpruning.cache.budget import row_bytes

        per_layer_bytes.append(row_bytes(tokens, bits, space.quantizer, space.geometry.head_dim) / 1024)
    bottom.bar(layers, per_layer_bytes, color="grey")
    bottom.axhline(space.uniform_allowance() / 1024, linestyle="--", color="black", linewidth=1,
                   label="uniform share")
    bottom.set_ylabel("KiB per KV row")
    bottom.set_xlabel("layer")
    bottom.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def search_plot(result, path: Path, model_name: str, budget: float) -> None:
    """The objective of every evaluation in order, the best so far, and the uniform starting points."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    values = [e.objective for e in result.history]
    best_so_far, current = [], float("inf")
    for value in values:
        current = min(current, value)
        best_so_far.append(current)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.scatter(range(len(values)), values, s=14, color="tab:blue", alpha=0.6, label="evaluated allocation")
    ax.step(range(len(values)), best_so_far, where="post", color="black", label="best so far")
    for i, e in enumerate(result.history):
        if e.kind == "uniform":
            ax.scatter([i], [e.objective], s=50, marker="s", facecolors="none", edgecolors="tab:red")
    ax.scatter([], [], s=50, marker="s", facecolors="none", edgecolors="tab:red", label="uniform 1x16 / 2x8 / 4x4")
    ax.set_xlabel("evaluation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # evaluations are counted, not measured
    ax.set_ylabel("answer cross-entropy (nats, lower is better)")
    ax.set_title(f"Search progress: {model_name}, budget {budget:g}")
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def comparison_plot(table, path: Path, title: str) -> None:
    """Held-out scores per benchmark, one bar per configuration."""
    plt = _pyplot()
    benchmarks = list(table.columns)
    configs = list(table.index)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(benchmarks)), 4))
    width = 0.8 / max(1, len(configs))
    for i, config in enumerate(configs):
        xs = [j + (i - (len(configs) - 1) / 2) * width for j in range(len(benchmarks))]
        values = table.loc[config].tolist()
        bars = ax.bar(xs, values, width=width, label=config)
        for bar, value in zip(bars, values):
            if value == value:  # not NaN
                ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(benchmarks)))
    ax.set_xticklabels(benchmarks)
    ax.set_ylabel("held-out score (0-100)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=9, ncol=len(configs), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
