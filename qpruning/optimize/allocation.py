"""A per-layer token-precision allocation under a memory budget, with exact byte accounting.

An :class:`Allocation` gives every group of layers its bits and its kept tokens. Its bytes are counted exactly as
the cache stores them (:func:`qpruning.cache.budget.row_bytes`: packed codes, 16-bit scales and zeros, the 16-bit
tail of a partial per-channel group) plus the small per-row index the cache keeps (row lengths), so an allocation
that fits its budget on paper also fits it when measured.

Saved as YAML, an allocation is a layer-wise configuration that any run can use: ``python run.py
allocation=path/to/allocation.yaml``: :meth:`Allocation.configuration` turns it into a plain
:class:`LayerConfiguration` (:class:`~qpruning.LayerOverride` s, a name, the budget it was found for), which is all a
run sees of it.

A group may also be stored rotated (``rotate: true``, :mod:`qpruning.cache.rotation`): the search chooses that when
its precision choices include rotated ones (``bits_choices=[4,8,16,2r,4r]``, see :class:`Precision`). A group
without ``rotate`` (every allocation written before) follows the run's quantizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qpruning.cache.budget import LayerOverride, check_disjoint, row_bytes
from qpruning.cache.quantizers import ALLOWED_BITS, KVQuantizer
from qpruning.errors import ConfigError, MissingFileError, is_int

if TYPE_CHECKING:
    from qpruning.compressor import KVCompressor

# Per (layer, row): kept-tokens count (int32) and the row lengths of at most two prefill segments (int32 each).
INDEX_BYTES_PER_ROW = 4 * 3
SIXTEEN_BIT = 2


@dataclass(frozen=True)
class LayerConfiguration:
    """A per-layer configuration as a run takes it: ``layers`` (every layer's bits and tokens), ``name`` (the
    run's ``layer_config`` unless one is given) and ``budget`` (the budget it was found for; None: not recorded)."""

    layers: list[LayerOverride]
    name: str
    budget: float | None = None


@dataclass(frozen=True)
class Geometry:
    """The shape of a model's cache: layers, KV rows per batch item (= KV heads), head_dim."""

    num_layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config) -> Geometry:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.num_key_value_heads, head_dim)


@dataclass(frozen=True)
class Precision:
    """One precision the search may give a group: ``bits``, and ``rotate`` (``True``: stored rotated; ``None``: as
    the run's quantizer). Written ``4`` or ``4r`` in ``bits_choices``."""

    bits: int
    rotate: bool | None = None

    @classmethod
    def parse(cls, choice: object) -> Precision:
        """``4`` -> 4 bits as the quantizer stores them, ``"4r"`` -> 4 bits rotated; raises a one-line
        :class:`ConfigError` otherwise."""
        bits, rotate = choice, None
        if isinstance(choice, str) and choice.endswith("r") and choice[:-1].isdigit():
            bits, rotate = int(choice[:-1]), True
        if not is_int(bits) or int(bits) not in ALLOWED_BITS or (rotate and int(bits) == 16):
            raise ConfigError(
                f"{choice!r} is not a precision",
                f"allowed: {', '.join(map(str, ALLOWED_BITS))}, or 2r, 4r, 8r (rotated: quant.rotate)",
            )
        return cls(int(bits), rotate)

    @property
    def label(self) -> str:
        return f"{self.bits}{'r' if self.rotate else ''}"


def rotated(rotate: bool | None, quantizer: KVQuantizer) -> bool:
    """Whether a group with ``rotate`` (``None``: the quantizer's) is stored rotated."""
    return quantizer.rotate if rotate is None else rotate


@dataclass(frozen=True)
class GroupSetting:
    """One group of consecutive layers: ``first``..``last`` keep ``tokens`` at ``bits``, rotated when ``rotate``
    (``None``: as the run's quantizer)."""

    first: int
    last: int
    bits: int
    tokens: int
    rotate: bool | None = None

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def entry(self) -> dict:
        """The group as a ``layers`` entry of a run (and of allocation.yaml): ``rotate`` only when set."""
        out = {"layers": f"{self.first}-{self.last}", "bits": self.bits, "tokens": self.tokens}
        if self.rotate is not None:
            out["rotate"] = self.rotate
        return out


@dataclass
class Allocation:
    """Bits and tokens for each group of layers (groups cover every layer once, in order)."""

    groups: list[GroupSetting]
    name: str = "allocation"
    meta: dict = field(default_factory=dict)

    def key(self) -> str:
        """A stable identity (for the evaluation cache)."""
        # ``rotate`` only when set: allocations without it keep the keys they had before it existed
        groups = [{k: v for k, v in asdict(g).items() if k != "rotate" or v is not None} for g in self.groups]
        blob = json.dumps(groups, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def per_layer(self) -> list[tuple[int, int]]:
        """``(bits, tokens)`` for every layer."""
        out = []
        for group in self.groups:
            out.extend([(group.bits, group.tokens)] * group.size)
        return out

    def nbytes(self, geometry: Geometry, quantizer: KVQuantizer) -> int:
        """Bytes one batch item's cache holds right after prefill (assuming the prompt has at least ``tokens``),
        a rotated layer's ``head_dim`` sign bytes included."""
        total = 0
        for group in self.groups:
            per_row = row_bytes(group.tokens, group.bits, quantizer, geometry.head_dim) + INDEX_BYTES_PER_ROW
            signs = geometry.head_dim if rotated(group.rotate, quantizer) else 0
            total += (per_row * geometry.kv_heads + signs) * group.size
        return total

    def overrides(self) -> list[LayerOverride]:
        return [LayerOverride.from_mapping(g.entry()) for g in self.groups]

    def records(self) -> list[dict]:
        """The groups as the evaluation cache records them."""
        return [vars(g) for g in self.groups]

    def compressor(self, base: KVCompressor) -> KVCompressor:
        """``base`` (kernel, compat, storage... kept) with this allocation's layers, in exact accounting: what the
        search evaluates and the held-out comparison runs."""
        return dataclasses.replace(base, tokens=None, budget_mode="exact", layers=self.overrides())

    def configuration(self) -> LayerConfiguration:
        """What a run uses of this allocation: its layer overrides, its name and the budget it was found for."""
        return LayerConfiguration(self.overrides(), self.name, self.meta.get("budget"))

    def mean_tokens(self) -> float:
        layers = self.per_layer()
        return sum(t for _, t in layers) / len(layers)

    def describe(self) -> str:
        return ", ".join(f"{g.first}-{g.last}: {g.tokens}x{g.bits}b{'r' if g.rotate else ''}" for g in self.groups)

    def to_yaml(self, path: Path, header: str = "") -> None:
        import yaml

        data = {
            "name": self.name,
            **self.meta,
            "layers": [g.entry() for g in self.groups],
        }
        text = yaml.safe_dump(data, sort_keys=False)
        Path(path).write_text((header.rstrip() + "\n" if header else "") + text)

    @classmethod
    def from_yaml(cls, path: Path) -> Allocation:
        import yaml

        allowed = "allowed: an allocation.yaml written by qpruning optimize (a 'layers' list of {layers, bits, tokens})"
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"allocation={path} does not exist", "allowed: the path of an allocation.yaml")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"allocation={path} is not valid YAML{where} ({problem})", allowed) from None
        except UnicodeDecodeError:
            raise ConfigError(f"allocation={path} is not a text file", allowed) from None
        if not isinstance(data, dict) or not isinstance(data.get("layers"), list) or not data["layers"]:
            raise ConfigError(f"allocation={path} is not an allocation file (it needs a 'layers' list)", allowed)
        groups = []
        for entry in data["layers"]:
            try:
                override = LayerOverride.from_mapping(entry)
            except ConfigError as exc:
                raise ConfigError(f"allocation={path}: {exc.what}", exc.allowed) from None
            if override.tokens is None:
                raise ConfigError(f"allocation={path}: layer group {override.layers!r} has no tokens", allowed)
            first, last = override.range()
            groups.append(GroupSetting(first, last, override.bits, int(override.tokens), override.rotate))
        check_disjoint([LayerOverride(f"{g.first}-{g.last}", g.bits, g.tokens) for g in groups], f"allocation={path}")
        meta = {k: v for k, v in data.items() if k not in ("name", "layers")}
        return cls(groups, name=data.get("name", Path(path).stem), meta=meta)


def full_cache_bytes(geometry: Geometry, full_tokens: int) -> int:
    """Bytes of the uncompressed 16-bit cache of ``full_tokens`` tokens (one batch item)."""
    return 2 * geometry.num_layers * geometry.kv_heads * full_tokens * geometry.head_dim * SIXTEEN_BIT


def tokens_for_bytes(allowance: float, bits: int, quantizer: KVQuantizer, head_dim: int, cap: int) -> int:
    """The most tokens (at most ``cap``) whose row, index included, fits in ``allowance`` bytes (a rotated layer's
    sign bytes are the caller's to take off first)."""
    # Every token costs at least its packed codes, which bounds the count from above; bytes are not monotonic
    # in tokens (a token completing a per-channel group moves the 16-bit tail into packed codes), so scan down.
    tokens = min(cap, int(allowance / (head_dim * bits / 8 * 2)) + 1)
    while tokens > 0 and row_bytes(tokens, bits, quantizer, head_dim) + INDEX_BYTES_PER_ROW > allowance:
        tokens -= 1
    return tokens


def layer_groups(num_layers: int, groups: int) -> list[tuple[int, int]]:
    """Split ``num_layers`` into ``groups`` contiguous ranges, as even as possible."""
    groups = max(1, min(groups, num_layers))
    bounds = [round(i * num_layers / groups) for i in range(groups + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(groups)]


def uniform(
    bits: int,
    budget: float,
    full_tokens: int,
    geometry: Geometry,
    quantizer: KVQuantizer,
    groups: list[tuple[int, int]],
    cap: int,
) -> Allocation:
    """Every layer at ``bits``, with as many tokens as fit the budget exactly (a 1x16 / 2x8 / 4x4 point)."""
    per_layer_row = budget * full_cache_bytes(geometry, full_tokens) / (geometry.num_layers * geometry.kv_heads)
    tokens = tokens_for_bytes(per_layer_row, bits, quantizer, geometry.head_dim, cap)
    settings = [GroupSetting(first, last, bits, tokens) for first, last in groups]
    return Allocation(settings, name=f"uniform-{bits}bit")
