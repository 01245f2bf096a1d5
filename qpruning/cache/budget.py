"""From a memory budget to kept tokens and bits per layer, and the byte formula of what a row holds.

A budget is either ``tokens`` (kept KV tokens per layer and head, the mean when layers differ) or ``budget``,
a fraction of the full 16-bit cache (the paper's Appendix B; the full cache is the model's context window,
e.g. 8k tokens for Llama-3-8B). Two accountings turn a fraction into tokens:

- ``nominal`` (the paper's): ``tokens = budget * full_tokens * 16 / bits``. At 1/64 of 8k: 128 tokens at 16 bits,
  256 at 8 bits, 512 at 4 bits. Scales and zeros are not counted (at group 64 they add ~12% at 4 bits).
- ``exact``: the most tokens whose bytes, packed codes + 16-bit scales and zeros + the 16-bit tokens that do
  not fill a quantization group + expected outliers, fit in ``budget`` times the full cache's bytes.

Layer-wise token-precision configurations (the paper's Figure 9) give some layer ranges other bits; with a
``budget`` their tokens follow from the same accounting, so every layer spends the same memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qpruning.cache.quantizers import ALLOWED_BITS, KVQuantizer
from qpruning.cache.tiers import mean_bits, tier_counts_of
from qpruning.errors import ConfigError, check_choice, check_int, is_int

BUDGET_MODES = ("nominal", "exact")
SIXTEEN_BIT_BYTES = 2


@dataclass
class LayerOverride:
    """Other bits (and optionally tokens) for a range of layers.

    Args:
        layers: ``"8-15"`` (inclusive), ``"3"``, or ``[first, last]``.
        bits: the precision of these layers.
        tokens: their kept tokens; by default derived from the budget at these bits (requires ``budget``).
        rotate: store these layers rotated (``quant.rotate``, :mod:`qpruning.cache.rotation`) or not; by default
            as the quantizer does.
    """

    layers: str | list[int]
    bits: int
    tokens: int | None = None
    rotate: bool | None = None

    def __post_init__(self) -> None:
        self._range = self._parse_range()
        check_int(f"layers[{self.layers!r}].bits", self.bits, choices=ALLOWED_BITS)
        check_int(f"layers[{self.layers!r}].tokens", self.tokens, minimum=1, optional=True)
        if self.rotate is not None and not isinstance(self.rotate, bool):
            raise ConfigError(f"layers[{self.layers!r}].rotate={self.rotate!r} is not a boolean",
                              "allowed: true, false, or leave it out (the quantizer's rotate)")

    def _parse_range(self) -> tuple[int, int]:
        allowed = "allowed: 'first-last' with whole layer numbers, first <= last (e.g. '8-15'), or one layer ('3')"
        if isinstance(self.layers, str):
            parts = [p.strip() for p in self.layers.split("-")]
            if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
                raise ConfigError(f"layer range {self.layers!r} is not a range of layer numbers", allowed)
            bounds = (int(parts[0]), int(parts[-1]))
        elif is_int(self.layers):
            bounds = (int(self.layers), int(self.layers))
        elif isinstance(self.layers, (list, tuple)) and self.layers and all(is_int(v) for v in self.layers):
            bounds = (int(self.layers[0]), int(self.layers[-1]))
        else:
            raise ConfigError(f"layer range {self.layers!r} is not a range of layer numbers", allowed)
        if bounds[0] < 0 or bounds[1] < bounds[0]:
            raise ConfigError(f"layer range {self.layers!r} is empty or negative", allowed)
        return bounds

    def range(self) -> tuple[int, int]:
        return self._range

    def label(self) -> str:
        first, last = self.range()
        rotation = {None: "", True: "r", False: "u"}[self.rotate]
        return f"{self.bits}bit{rotation}@{first}-{last}"

    @classmethod
    def from_mapping(cls, entry: object) -> LayerOverride:
        """One entry of ``layers=`` (``{layers: "8-15", bits: 16, tokens: 512}``) as typed by a user."""
        keys = ("layers", "bits", "tokens", "rotate")
        allowed = 'allowed: {layers: "first-last", bits: 2|4|8|16, tokens: N (optional), rotate: true|false (optional)}'
        if isinstance(entry, LayerOverride):
            return entry
        if not isinstance(entry, dict):
            raise ConfigError(f"layers entry {entry!r} is not a mapping", allowed)
        unknown = sorted(set(entry) - set(keys))
        if unknown or "layers" not in entry or "bits" not in entry:
            what = f"unknown key(s) {', '.join(unknown)}" if unknown else "needs layers and bits"
            raise ConfigError(f"layers entry {entry!r}: {what}", allowed)
        return cls(**entry)


def check_disjoint(overrides: list[LayerOverride], key: str = "layers") -> None:
    """Refuse layer ranges that overlap (which one would win is not something a user should have to guess)."""
    spans = sorted(((o.range(), o.layers) for o in overrides), key=lambda span: span[0])
    for (a, a_name), (b, b_name) in zip(spans, spans[1:]):
        if b[0] <= a[1]:
            overlap = f"{b[0]}-{min(a[1], b[1])}" if b[0] != min(a[1], b[1]) else f"{b[0]}"
            raise ConfigError(
                f"{key}: ranges {a_name!r} and {b_name!r} overlap at layer(s) {overlap}",
                "allowed: ranges that do not overlap (each layer configured at most once)",
            )


SLIDING_MODES = ("keep", "quantize")


@dataclass(frozen=True)
class LayerPlan:
    """What one layer keeps: ``tokens`` per KV head (before a pruner's own reshaping) at ``bits``, stored rotated
    when ``rotate`` (:mod:`qpruning.cache.rotation`).

    A sliding-window layer (``window``: its window, counting the current token) holds at most its window whatever
    the budget: ``sliding="keep"`` as the model's own cache layer does (``bits`` 16), ``sliding="quantize"`` with
    the run's quantizer at ``bits``. ``window`` is None for a global layer."""

    bits: int
    tokens: int | None  # None: keep every token
    rotate: bool = False
    window: int | None = None
    sliding: str | None = None  # "keep" or "quantize" for a sliding-window layer

    def __post_init__(self) -> None:
        if (self.window is None) != (self.sliding is None):
            raise ValueError("LayerPlan: window and sliding go together (both set for a sliding-window layer)")
        if self.sliding is not None:
            check_choice("sliding", self.sliding, SLIDING_MODES)


def row_bytes(tokens: int, bits: int, quantizer: KVQuantizer, head_dim: int) -> int:
    """Bytes that ``tokens`` kept tokens of one (batch item, KV head) row take, keys and values together.

    Counts packed codes, 16-bit scales and zeros, and the 16-bit tokens that do not fill a per-channel group;
    expected outliers are added by :func:`expected_outlier_bytes`.
    """
    if bits == 16:
        return 2 * tokens * head_dim * SIXTEEN_BIT_BYTES
    quantized = quantizer.with_bits(bits).quantizable(tokens)
    tail = tokens - quantized
    groups = quantized * head_dim // quantizer.group_size
    per_tensor = quantized * head_dim * bits // 8 + 2 * groups * SIXTEEN_BIT_BYTES + tail * head_dim * SIXTEEN_BIT_BYTES
    return 2 * per_tensor


def expected_outlier_bytes(tokens: int, bits: int, quantizer: KVQuantizer, head_dim: int) -> float:
    """Bytes beyond codes, scales and zeros of a row of ``tokens`` kept tokens at ``bits``: the quantizer's
    :meth:`~qpruning.cache.quantizers.KVQuantizer.side_bytes` (expected outliers; KVQuant's positions too)."""
    if bits == 16:
        return 0.0
    at_bits = quantizer.with_bits(bits)
    return at_bits.side_bytes(at_bits.quantizable(tokens), head_dim)


def tiered_row_bytes(tokens: int, quantizer: KVQuantizer, head_dim: int) -> float:
    """:func:`row_bytes` plus expected outliers of a row of ``tokens`` kept tokens stored in ``quantizer``'s tiers
    (:mod:`qpruning.cache.tiers`): each tier's tokens at its own bits."""
    total = 0.0
    for count, tier in zip(tier_counts_of(tokens, quantizer.tier_plan), quantizer.tier_plan):
        total += row_bytes(count, tier.bits, quantizer, head_dim)
        total += expected_outlier_bytes(count, tier.bits, quantizer, head_dim)
    return total


def tokens_for_budget(
    budget: float, full_tokens: int, bits: int, quantizer: KVQuantizer, head_dim: int, mode: str = "nominal"
) -> int:
    """Kept tokens per layer and head that spend ``budget`` of a 16-bit cache of ``full_tokens`` tokens (for a
    tiered quantizer, :attr:`KVQuantizer.tier_plan`, at its tiers' bits: ``bits`` is then its decoded tokens')."""
    check_choice("budget_mode", mode, BUDGET_MODES)
    tiers = quantizer.tier_plan
    nominal_bits = mean_bits(tiers) if tiers else bits
    # Every token costs at least its packed codes, so the nominal count is an upper bound.
    tokens = int(math.floor(budget * full_tokens * 16 / nominal_bits + 1e-9))
    if mode == "nominal":
        return tokens
    allowance = budget * 2 * full_tokens * head_dim * SIXTEEN_BIT_BYTES
    # Bytes are not monotonic in tokens (a token that completes a per-channel group moves the group's 16-bit
    # tail into packed codes), so scan down from the bound instead of bisecting.
    while tokens > 0:
        if tiers:
            cost = tiered_row_bytes(tokens, quantizer, head_dim)
        else:
            cost = row_bytes(tokens, bits, quantizer, head_dim) + expected_outlier_bytes(tokens, bits, quantizer, head_dim)
        if cost <= allowance:
            break
        tokens -= 1
    return tokens
