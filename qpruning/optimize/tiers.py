"""The tier search (``qpruning optimize search=tiers``): the shares of precision per token (``quant.tiers``).

A state is a vector of shares over ``tier_bits`` (``[8, 4, 2]``: the best-scored kept tokens first), on a grid of
``tier_step``: whole steps, each >= 0, summing to 1 (held as integer counts of steps, so no share drifts off the
grid). Its :class:`Tiering` is the run's quantizer with ``quant.tiers`` set to the non-zero shares, and as many kept
tokens per row as the budget buys in exact accounting, budgeted as every tiered run is
(:func:`~qpruning.cache.budget.tokens_for_budget`: each tier's codes, scales, zeros and 16-bit remainder counted,
within the bytes of the same budget as a uniform point). A tiering fits when those tokens hold the pruner's window.

:func:`~qpruning.optimize.search.greedy_search` searches it as it does layer allocations: from the uniform states
(every share on one bit width, those that fit), moves that shift one ``tier_step`` of share from one tier to
another, evaluated by the same objective and cached in the same ``evaluations.jsonl`` under keys of their own
(``tiers-...``: never a layer allocation's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qpruning.cache.budget import tiered_row_bytes, tokens_for_budget
from qpruning.cache.quantizers import ALLOWED_BITS, KVQuantizer
from qpruning.cache.tiers import Tier, tier_counts_of, tier_label
from qpruning.errors import ConfigError, check_real, is_int
from qpruning.optimize.allocation import Geometry, full_cache_bytes

if TYPE_CHECKING:
    from qpruning.compressor import KVCompressor

SEARCHES = ("layers", "tiers")
MAX_STEPS = 100  # tier_step >= 0.01: finer shares than that are below a token at the budgets searched
TIER_BITS_ALLOWED = (
    f"allowed: two or more distinct bit widths of {', '.join(map(str, ALLOWED_BITS))}, from the best-scored "
    "tokens down, e.g. [8,4,2]"
)
TIER_STEP_ALLOWED = "allowed: a step that divides 1 into whole parts, 0.01 to 1 (e.g. 0.1, 0.05, 0.25, 0.5)"


def check_tier_bits(value: object) -> tuple[int, ...]:
    """``tier_bits`` as a tuple; raises a one-line :class:`ConfigError` unless distinct supported bit widths."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"tier_bits={value!r} is not a list", TIER_BITS_ALLOWED)
    for bits in value:
        if not is_int(bits) or bits not in ALLOWED_BITS:
            raise ConfigError(f"tier_bits={list(value)}: {bits!r} is not a supported bit width", TIER_BITS_ALLOWED)
    if len(value) < 2 or len(set(value)) != len(value):
        raise ConfigError(f"tier_bits={list(value)} has fewer than two bit widths or repeats one", TIER_BITS_ALLOWED)
    return tuple(int(b) for b in value)


def grid_steps(tier_step: object) -> int:
    """How many steps of ``tier_step`` make 1; raises a one-line :class:`ConfigError` unless a whole number."""
    check_real("tier_step", tier_step, low=0.0, high=1.0, allowed=TIER_STEP_ALLOWED)
    step = float(tier_step)  # type: ignore[arg-type]  # check_real: a real number
    steps = round(1 / step)
    if abs(steps * step - 1) > 1e-9 or steps > MAX_STEPS:
        raise ConfigError(f"tier_step={tier_step} does not divide 1 into a grid of whole steps", TIER_STEP_ALLOWED)
    return steps


@dataclass
class Tiering:
    """Shares of the kept tokens over bit widths (zeros allowed), and the kept tokens per row the budget buys."""

    shares: tuple[float, ...]
    bits: tuple[int, ...]
    tokens: int
    name: str = "tiering"
    meta: dict = field(default_factory=dict)

    def tiers(self) -> list[list[float | int]]:
        """The ``quant.tiers`` value: ``[[share, bits], ...]``, the zero shares left out."""
        return [[share, bits] for share, bits in zip(self.shares, self.bits) if share > 0]

    def plan(self) -> tuple[Tier, ...]:
        return tuple(Tier(share, bits) for share, bits in zip(self.shares, self.bits) if share > 0)

    def key(self) -> str:
        """A stable identity (for the evaluation cache), ``tiers-`` first: never a layer allocation's key."""
        blob = json.dumps({"tiers": self.tiers(), "tokens": self.tokens}, sort_keys=True)
        return "tiers-" + hashlib.sha1(blob.encode()).hexdigest()[:16]

    def records(self) -> list[dict]:
        """The tiers as the evaluation cache records them: share, bits and tokens per row of each."""
        plan = self.plan()
        counts = tier_counts_of(self.tokens, plan)
        return [{"share": t.share, "bits": t.bits, "tokens": count} for t, count in zip(plan, counts)]

    def describe(self) -> str:
        return f"{tier_label(self.plan())}, {self.tokens} tokens"

    def override(self) -> str:
        """``quant.tiers=[[0.1,8],[0.4,4],[0.5,2]]``: this tiering on a command line."""
        return "quant.tiers=[" + ",".join(f"[{share:g},{bits}]" for share, bits in self.tiers()) + "]"

    def quantizer(self, base: KVQuantizer) -> KVQuantizer:
        return dataclasses.replace(base, tiers=self.tiers())

    def compressor(self, base: KVCompressor) -> KVCompressor:
        """``base`` (its budget, kernel, compat, storage... kept) with these tiers, in exact accounting: what the
        search evaluates, the held-out comparison runs, and ``tiers.yaml``'s command line reproduces."""
        return dataclasses.replace(base, budget_mode="exact", layers=[], quantizer=self.quantizer(base.quantizer))

    def to_yaml(self, path: Path, header: str = "") -> None:
        import yaml

        data = {"name": self.name, **self.meta, "tiers": self.tiers()}
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
        Path(path).write_text((header.rstrip() + "\n" if header else "") + text)


def run_command(tiering: Tiering, base: KVCompressor, model_name: str, extra: tuple[str, ...] = ()) -> str:
    """The ``python run.py`` command line that runs ``tiering`` as the search evaluated it (``extra``: the
    search's own ``pruner.*``/``quant.*``/``model.*`` overrides)."""
    quantizer = base.quantizer
    args = [f"model={model_name}", f"pruner={base.pruner.name}", f"quant={quantizer.name}", f"bits={quantizer.bits}",
            f"group_size={quantizer.group_size}", f"budget={base.budget:g}", "budget_mode=exact",
            f"full_cache_tokens={base.full_cache_tokens}"]
    if base.storage_dtype is not None:
        args.append(f"storage_dtype={base.storage_dtype}")
    args += [*extra, tiering.override()]
    return shlex.join(["python", "run.py", *args])


@dataclass
class TierSpace:
    """What the tier search may choose (shares over ``tier_bits`` on a ``tier_step`` grid), and its budget."""

    geometry: Geometry
    quantizer: KVQuantizer  # the run's (untiered): its bits are the decoded tokens'
    budget: float
    full_tokens: int
    tier_bits: tuple[int, ...] = (8, 4, 2)
    tier_step: float = 0.1
    min_tokens: int = 1  # the pruner's window must fit

    def __post_init__(self) -> None:
        self.tier_bits = check_tier_bits(self.tier_bits)
        self.steps = grid_steps(self.tier_step)

    @property
    def budget_bytes(self) -> float:
        return self.budget * full_cache_bytes(self.geometry, self.full_tokens)

    def shares(self, state: tuple[int, ...]) -> tuple[float, ...]:
        return tuple(round(count / self.steps, 10) for count in state)

    def allocation(self, state: tuple[int, ...], name: str = "tiering") -> Tiering:
        """The tiering of ``state``: its shares, and the tokens per row the budget buys at them."""
        shares = self.shares(state)
        tiering = Tiering(shares, self.tier_bits, 0, name)
        quantizer = tiering.quantizer(self.quantizer)
        tiering.tokens = tokens_for_budget(self.budget, self.full_tokens, quantizer.bits, quantizer,
                                           self.geometry.head_dim, "exact")
        return tiering

    def nbytes(self, tiering: Tiering) -> int:
        """Bytes of the kept tokens (every row of every layer) as the budget counts them."""
        row = tiered_row_bytes(tiering.tokens, tiering.quantizer(self.quantizer), self.geometry.head_dim)
        return int(row * self.geometry.kv_heads * self.geometry.num_layers)

    def fits(self, state: tuple[int, ...]) -> bool:
        tiering = self.allocation(state)
        return tiering.tokens >= self.min_tokens and self.nbytes(tiering) <= self.budget_bytes

    def uniform_states(self) -> dict[str, tuple[int, ...]]:
        """Every share on one bit width (1x16, 2x8, 4x4...), those that fit."""
        states = {}
        for index, bits in sorted(enumerate(self.tier_bits), key=lambda item: -item[1]):
            state = tuple(self.steps if i == index else 0 for i in range(len(self.tier_bits)))
            if self.fits(state):
                states[f"{16 // bits}x{bits}"] = state
        return states

    def moves(self, state: tuple[int, ...]) -> list[tuple[int, ...]]:
        """One ``tier_step`` of share from one tier to another, the ones that fit."""
        out = []
        for i in range(len(state)):
            for j in range(len(state)):
                if i != j and state[i] > 0:
                    moved = list(state)
                    moved[i] -= 1
                    moved[j] += 1
                    out.append(tuple(moved))
        return [s for s in out if self.fits(s)]


def check_search(search: object) -> str:
    if search not in SEARCHES:
        raise ConfigError(f"search={search!r} is not a search", "allowed: layers (bits and tokens per layer group) "
                          "or tiers (shares of precision per token, quant.tiers)")
    return str(search)
