"""PyramidKV: more tokens in the lower layers, fewer in the upper ones, SnapKV scoring within each layer.

Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling", 2024.
Attention is spread widely in lower layers and concentrated in upper ones, so layer budgets fall linearly from
the bottom layer to the top one. With ``S = budget - window`` selected tokens per layer on average, the top
layer gets ``S // beta`` and the bottom one ``2S - S // beta`` (beta = 20 in the paper), so the total equals the
uniform one. The paper under study keeps the last 8 tokens as the window (Appendix B).

Infeasible pyramids are handled explicitly, as in the reference code (KVCache-Factory ``PyramidKVCluster``):
- if the bottom layer would need more tokens than the prompt has, the bottom is capped at the prompt length and
  the top raised to keep the total (``redistributed``);
- if the prompt is shorter than twice the selected budget, the reference code falls back to uniform budgets;
  ``short_prompt="uniform"`` (default) does the same and says so in the log and in :attr:`last_schedule`;
  ``short_prompt="pyramid"`` keeps the redistributed pyramid instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from qpruning.errors import ConfigError
from qpruning.pruners.snapkv import SnapKV

logger = logging.getLogger(__name__)


def largest_remainder_round(values: Sequence[float], total: int) -> list[int]:
    """Round ``values`` to integers that sum to ``total`` (Hamilton's method), keeping the largest fractions."""
    floors = [int(v) for v in values]
    rest = total - sum(floors)
    order = sorted(range(len(values)), key=lambda i: (values[i] - floors[i]), reverse=True)
    for i in order[: max(rest, 0)]:
        floors[i] += 1
    return floors


@dataclass
class PyramidKV(SnapKV):
    """SnapKV scoring with pyramid-shaped layer budgets.

    Args:
        beta: the ratio between the average and the top layer's selected budget (20 in the paper).
        short_prompt: ``uniform`` or ``pyramid``, what to do when the prompt is shorter than twice the budget.
    """

    name: ClassVar[str] = "pyramidkv"
    window: int = 8
    beta: int = 20
    short_prompt: str = "uniform"
    last_schedule: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 1:
            raise ConfigError(f"pruner.beta={self.beta} is below 1", "allowed: pyramidkv beta >= 1")
        if self.short_prompt not in ("uniform", "pyramid"):
            raise ConfigError(f"pruner.short_prompt={self.short_prompt!r} is not allowed", "allowed: uniform or pyramid")

    def selected_schedule(self, selected: int, num_layers: int, available: int) -> tuple[list[int], str]:
        """Selected (non-window) tokens per layer for an average of ``selected``, and how it was obtained."""
        if num_layers == 1:
            return [selected], "single-layer"
        top = selected // self.beta
        bottom = 2 * selected - top
        mode = "pyramid"
        if bottom > available:
            bottom = available
            top = 2 * selected - bottom
            mode = "redistributed"
        step = (bottom - top) / (num_layers - 1)
        raw = [bottom - layer * step for layer in range(num_layers)]
        return largest_remainder_round(raw, selected * num_layers), mode

    def layer_tokens(
        self, tokens: Sequence[int], seq_len: int, statistics: Sequence[float] | None = None
    ) -> list[int]:
        num_layers = len(tokens)
        window = min(self.window, seq_len)
        mean_tokens = sum(tokens) / num_layers
        if mean_tokens >= seq_len:
            self.last_schedule = {"mode": "no-pruning", "seq_len": seq_len}
            return list(tokens)
        selected = [b - window for b in tokens]
        mean_selected = int(round(sum(selected) / num_layers))
        if seq_len < 2 * mean_selected and self.short_prompt == "uniform":
            logger.info(
                "pyramidkv: prompt of %d tokens is shorter than twice the kept tokens; uniform layer budgets "
                "(the reference code's fallback)", seq_len
            )
            self.last_schedule = {"mode": "uniform-fallback", "seq_len": seq_len}
            return list(tokens)
        schedule, mode = self.selected_schedule(mean_selected, num_layers, seq_len - window)
        if len(set(selected)) > 1:
            # Layer-wise plans: scale the pyramid by each layer's own share of the budget.
            schedule = largest_remainder_round(
                [s * sel / max(mean_selected, 1) for s, sel in zip(schedule, selected)], sum(selected)
            )
        self.last_schedule = {"mode": mode, "seq_len": seq_len, "selected": schedule}
        return [window + s for s in schedule]
