"""KV quantization methods: one small class each, differing in how keys and values are grouped.

All of them quantize the tokens that pruning kept (prune first, then quantize) and the tokens generated
while decoding, which wait in a full-precision residual window of ``residual_length`` tokens and are quantized
a block at a time as it fills (KIVI's streaming scheme, Liu et al. 2024, Alg. 1). ``bits=16`` means no
quantization: the kept tokens stay in 16 bits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, overload

import torch

from qpruning.cache.quantized import (
    OUTLIER_BYTES,
    GroupAxis,
    OutlierFilter,
    QuantizedTensor,
    check_groupable,
    quantize,
)
from qpruning.cache.rope import KeyRope, PreRopeKeys
from qpruning.cache.rotation import check_rotatable
from qpruning.cache.tiers import Tier, parse_tiers, tier_label
from qpruning.errors import ConfigError, check_bool, check_int, check_params

ALLOWED_BITS = (2, 4, 8, 16)
ALLOWED_GROUP_SIZES = (32, 64, 128)
POSITION_BYTES = 4  # KVQuant: each quantized key's RoPE position, int32


@dataclass
class KVQuantizer:
    """Asymmetric min-max group quantization of keys and values (the paper's Eq. 4-5).

    Args:
        bits: 2, 4 or 8 bits per number, or 16 for no quantization.
        group_size: numbers sharing one scale and zero: 32, 64 or 128 (64 in the paper, after FlexGen).
        residual_length: decoded tokens kept in full precision before they are quantized together
            (default: ``group_size``); a multiple of ``group_size``.
        outliers: numbers kept exactly as sparse 16-bit outliers (``None``: no outlier filtering).
        rotate: store keys and values rotated by a fixed randomized Hadamard matrix per layer (QuaRot-style,
            :mod:`qpruning.cache.rotation`), which spreads outlier channels before quantizing; needs a head_dim
            that is a power of two. ``quant=kivi_rot`` / ``flexgen_rot`` set it.
        tiers: precision per token (:mod:`qpruning.cache.tiers`): ``[[share, bits], ...]`` from the best-scored
            kept tokens down, e.g. ``[[0.1, 8], [0.4, 4], [0.5, 2]]``; ``bits`` is then the precision of the
            tokens added after prefill. ``None``: every kept token at ``bits``.
    """

    name: ClassVar[str] = "minmax"
    key_axis: ClassVar[GroupAxis] = GroupAxis.CHANNELS
    value_axis: ClassVar[GroupAxis] = GroupAxis.CHANNELS
    # whether keys are quantized before RoPE (KVQuant): the layer then hands quantize_keys their positions
    keys_pre_rope: ClassVar[bool] = False

    bits: int = 4
    group_size: int = 64
    residual_length: int | None = None
    outliers: OutlierFilter | None = None
    rotate: bool = False
    tiers: list[list[float]] | None = None

    def __post_init__(self) -> None:
        check_int("bits", self.bits, choices=ALLOWED_BITS, meaning="16 = no quantization")
        self.tier_plan: tuple[Tier, ...] = () if self.tiers is None else parse_tiers(self.tiers, ALLOWED_BITS)
        check_bool("quant.rotate", self.rotate)
        check_int("group_size", self.group_size, choices=ALLOWED_GROUP_SIZES)
        if self.residual_length is None:
            self.residual_length = self.group_size
        check_int("quant.residual_length", self.residual_length, minimum=1)
        if self.residual_length % self.group_size:
            raise ConfigError(
                f"quant.residual_length={self.residual_length} is not a multiple of group_size={self.group_size}",
                "allowed: a positive multiple of group_size",
            )
        if isinstance(self.outliers, dict):
            self.outliers = OutlierFilter(**self.outliers)

    @property
    def enabled(self) -> bool:
        """False for ``bits=16``: the cache then stores the kept tokens unquantized."""
        return self.bits < 16

    def needs_reference_attention(self, bits: int) -> bool:
        """Whether a layer quantized by this method at ``bits`` must run the PyTorch reference attention (its
        codes are read by no fused kernel); ``False``: any backend reads them."""
        return False

    def with_bits(self, bits: int) -> KVQuantizer:
        """The same method at another precision (layer-wise token-precision configurations use this)."""
        return dataclasses.replace(self, bits=bits)

    def untiered(self, bits: int) -> KVQuantizer:
        """The same method at ``bits`` for every token (one tier's quantizer)."""
        return dataclasses.replace(self, bits=bits, tiers=None)

    def with_rotate(self, rotate: bool) -> KVQuantizer:
        """The same method with or without the Hadamard rotation (layer-wise configurations use this)."""
        return dataclasses.replace(self, rotate=rotate)

    def validate_head_dim(self, head_dim: int) -> None:
        """Raise if this quantizer cannot group (or rotate) a head of ``head_dim`` channels."""
        if self.rotate:
            check_rotatable(head_dim)
        if not self.enabled and all(t.bits == 16 for t in self.tier_plan):
            return
        for axis in (self.key_axis, self.value_axis):
            check_groupable(self.group_size, head_dim, self.group_size, axis)
        if head_dim % 8:
            raise ValueError(f"head_dim={head_dim} must be a multiple of 8 to pack {self.bits}-bit codes")

    @overload
    def quantizable(self, num_tokens: int) -> int: ...
    @overload
    def quantizable(self, num_tokens: torch.Tensor) -> torch.Tensor | int: ...

    def quantizable(self, num_tokens: int | torch.Tensor) -> int | torch.Tensor:
        """How many of ``num_tokens`` tokens of one row can be quantized now; the rest wait in 16 bits.
        ``num_tokens`` may be a tensor of row lengths (a tensor back, or 0 when the quantizer is off).

        Per-channel groups (KIVI keys) need whole groups of ``group_size`` tokens; per-token groups take any count.
        Keys and values are split at the same token so that a token is either quantized or not.
        """
        if not self.enabled:
            return 0
        if GroupAxis.TOKENS in (self.key_axis, self.value_axis):
            return num_tokens - num_tokens % self.group_size
        return num_tokens

    def side_bytes(self, quantized: int, head_dim: int) -> float:
        """Bytes beyond packed codes, scales and zeros that ``quantized`` quantized tokens of one row hold, keys and
        values together: their outliers (expected, :meth:`OutlierFilter.expected_count`)."""
        if not self.enabled or self.outliers is None:
            return 0.0
        count = sum(self.outliers.expected_count(quantized, head_dim, self.group_size, axis)
                    for axis in (self.key_axis, self.value_axis))
        return count * OUTLIER_BYTES

    def quantize_keys(
        self, x: torch.Tensor, scale_dtype: torch.dtype, rope: KeyRope | None = None
    ) -> QuantizedTensor:
        """Quantize post-RoPE keys ``x`` ``[n, head_dim]``; ``rope`` (their rotary and positions) is read by a
        quantizer that :attr:`keys_pre_rope` only."""
        return self._quantize(x, self.key_axis, scale_dtype)

    def quantize_values(self, x: torch.Tensor, scale_dtype: torch.dtype) -> QuantizedTensor:
        return self._quantize(x, self.value_axis, scale_dtype)

    def _quantize(self, x: torch.Tensor, axis: GroupAxis, scale_dtype: torch.dtype) -> QuantizedTensor:
        return quantize(x, self.bits, self.group_size, axis, scale_dtype, self.outliers)

    @property
    def label(self) -> str:
        """How runs name this quantizer (``quant`` in metrics.json): its name, with ``_rot`` when ``rotate=true``
        was set on a quantizer that does not rotate by name (``quant=kivi quant.rotate=true`` -> ``kivi_rot``)."""
        return f"{self.name}_rot" if self.rotate and not self.name.endswith("_rot") else self.name

    @property
    def tiers_label(self) -> str | None:
        """How runs name the tiers (``tiers`` in metrics.json): ``0.1x8+0.4x4+0.5x2``, or ``None`` without."""
        return tier_label(self.tier_plan) if self.tier_plan else None

    def describe(self) -> str:
        tiers = f" tiers {tier_label(self.tier_plan)}" if self.tier_plan else ""
        return f"{self.name} {self.bits}-bit g{self.group_size}" + (" rot" if self.rotate else "") + tiers


@dataclass
class KIVI(KVQuantizer):
    """KIVI: keys per-channel (groups of tokens within a channel), values per-token (groups of channels).

    Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024. The paper's default
    quantizer (Sec. 5) for every pruner that keeps the same tokens in all heads.
    """

    name: ClassVar[str] = "kivi"
    key_axis: ClassVar[GroupAxis] = GroupAxis.TOKENS
    value_axis: ClassVar[GroupAxis] = GroupAxis.CHANNELS


@dataclass
class FlexGen(KVQuantizer):
    """FlexGen: keys and values both per-token, in groups of channels.

    Sheng et al., "FlexGen: High-Throughput Generative Inference of Large Language Models with a Single GPU",
    ICML 2023 (group-wise 4-bit KV compression, groups of 64). Used by the paper for Ada-KV and HeadKV.
    """

    name: ClassVar[str] = "flexgen"


@dataclass
class KIVIOutlier(KIVI):
    """KIVI with ~1% outliers kept exactly in sparse 16-bit storage (the paper's Sec. 7.3, after KVQuant)."""

    name: ClassVar[str] = "kivi_outlier"
    outliers: OutlierFilter | None = field(default_factory=OutlierFilter)


@dataclass
class FlexGenOutlier(FlexGen):
    """FlexGen with ~1% outliers kept exactly in sparse 16-bit storage (the paper's Sec. 7.3, after KVQuant)."""

    name: ClassVar[str] = "flexgen_outlier"
    outliers: OutlierFilter | None = field(default_factory=OutlierFilter)


@dataclass
class KIVIRot(KIVI):
    """KIVI on keys and values rotated by a fixed randomized Hadamard matrix per layer (QuaRot-style; see
    :mod:`qpruning.cache.rotation`): outlier channels are spread before quantizing, which 2-bit KIVI needs."""

    name: ClassVar[str] = "kivi_rot"
    rotate: bool = True


@dataclass
class FlexGenRot(FlexGen):
    """FlexGen on keys and values rotated by a fixed randomized Hadamard matrix per layer (QuaRot-style)."""

    name: ClassVar[str] = "flexgen_rot"
    rotate: bool = True


@dataclass
class HQQ(KVQuantizer):
    """Half-Quadratic Quantization of the groups through the ``hqq`` package (Badri & Shaji, 2023).

    HQQ's optimizer chooses each group's scale and zero (``optimize=True``: a few proximal iterations that
    minimize an Lp<1 error; off by default, it takes seconds per tensor on a CPU; with ``optimize=False`` it is
    plain min-max). The codes are then stored in this package's packed layout so that every quantizer shares one
    storage format and one decode path. ``layout`` picks the groups: ``kivi`` (keys per channel over 64 tokens,
    values per token) or ``flexgen`` (both per token), this package's groups within each row.

    This is not what the paper's code ran: it quantized through transformers' HQQ cache, on HQQ's own groups of
    the whole flattened layer tensor (keys axis 1 = 64 channels of one token for its "KIVI", axis 0 = strided
    groups across heads and tokens for its "FlexGen"; values axis 0 for both), which ``compat=paper`` computes
    (:class:`qpruning.cache.hqq_cache.HQQCache`, docs/fidelity.md). With ``compat=paper``, ``quant=hqq`` maps to
    that path by ``layout``, keeping ``optimize``.
    """

    name: ClassVar[str] = "hqq"
    layout: str = "kivi"
    optimize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layout not in ("kivi", "flexgen"):
            raise ConfigError(f"quant.layout={self.layout!r} is not allowed for hqq", "allowed: kivi or flexgen")
        if self.outliers is not None:
            raise ConfigError("quant=hqq does not take outliers", "use quant=kivi_outlier or quant=flexgen_outlier")
        if self.rotate:
            raise ConfigError("quant=hqq does not take rotate=true",
                              "allowed: rotate=false, or quant=kivi_rot / quant=flexgen_rot")

    @property
    def key_axis(self) -> GroupAxis:  # type: ignore[override]
        return GroupAxis.TOKENS if self.layout == "kivi" else GroupAxis.CHANNELS

    @property
    def value_axis(self) -> GroupAxis:  # type: ignore[override]
        return GroupAxis.CHANNELS

    def _quantize(self, x: torch.Tensor, axis: GroupAxis, scale_dtype: torch.dtype) -> QuantizedTensor:
        from hqq.core.quantize import Quantizer as HQQQuantizer

        n, d = x.shape
        check_groupable(n, d, self.group_size, axis)
        # Lay the groups out as rows of a [groups, group_size] matrix, which HQQ quantizes along axis 1.
        if axis is GroupAxis.CHANNELS:
            rows = x.float().reshape(-1, self.group_size)
            group_shape = (n, d // self.group_size)
        else:
            rows = x.float().reshape(n // self.group_size, self.group_size, d).transpose(1, 2)
            group_shape = (n // self.group_size, d)
            rows = rows.reshape(-1, self.group_size)
        _, meta = HQQQuantizer.quantize(
            rows,
            nbits=self.bits,
            channel_wise=True,
            group_size=self.group_size,
            optimize=self.optimize,
            axis=1,
            bitpack=False,
            compute_dtype=torch.float32,
            device=str(x.device),
        )
        # HQQ dequantizes as (q - z) * s; this package as q * s + zero, so zero = -z * s.
        scale = meta["scale"].reshape(group_shape).float()
        zero = (-meta["zero"].reshape(group_shape).float()) * scale
        return quantize(x, self.bits, self.group_size, axis, scale_dtype, scale_zero=(scale, zero))


@dataclass
class KVQuant(KVQuantizer):
    """KVQuant-style: keys per channel *before* RoPE, values per token, per-vector dense-and-sparse outliers.

    Hooper et al., "KVQuant: Towards 10 Million Context Length LLM Inference with KV Cache Quantization",
    NeurIPS 2024. Of its components this quantizer has pre-RoPE per-channel key quantization (Sec. 3.2: the
    rotation mixes each pre-RoPE channel, whose outlier range is stable over tokens, with its partner at a
    position-dependent angle; :mod:`qpruning.cache.rope` un-rotates the keys the model hands over, keeps each
    key's position, and re-applies RoPE when dequantizing) and per-vector outliers (Sec. 3.4: the numbers of each
    key channel and each value token farthest from its median kept exactly in 16 bits, ``ceil(1% * length)`` per
    vector by default). It quantizes on KIVI's uniform min-max grid, not KVQuant's sensitivity-weighted
    non-uniform datatype (nuq), and chooses outliers online instead of from calibrated per-channel thresholds.
    Its codes are read through dequantization: layers run the PyTorch reference attention.
    """

    name: ClassVar[str] = "kvquant"
    key_axis: ClassVar[GroupAxis] = GroupAxis.TOKENS
    value_axis: ClassVar[GroupAxis] = GroupAxis.CHANNELS
    keys_pre_rope: ClassVar[bool] = True
    outliers: OutlierFilter | None = field(default_factory=lambda: OutlierFilter(fraction=0.01, per="vector"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rotate:
            raise ConfigError(
                "quant=kvquant quantizes keys before RoPE, and quant.rotate (a Hadamard rotation of the stored keys) "
                "does not combine with it",
                "allowed: quant=kvquant with quant.rotate=false, or quant=kivi_rot / flexgen_rot",
            )

    def needs_reference_attention(self, bits: int) -> bool:
        return bits < 16  # pre-RoPE codes: read through dequantize (RoPE re-applied), by the reference path

    def side_bytes(self, quantized: int, head_dim: int) -> float:
        """The outliers, and each quantized key's int32 position."""
        return super().side_bytes(quantized, head_dim) + (POSITION_BYTES * quantized if self.enabled else 0)

    def quantize_keys(
        self, x: torch.Tensor, scale_dtype: torch.dtype, rope: KeyRope | None = None
    ) -> QuantizedTensor:
        if rope is None:
            raise ValueError("quant=kvquant quantizes keys before RoPE and needs their rotary and positions")
        pre = rope.rotary.remove(x, rope.positions)
        q = self._quantize(pre, self.key_axis, scale_dtype)
        fields = {f.name: getattr(q, f.name) for f in dataclasses.fields(q)}
        return PreRopeKeys(**fields, rotary=rope.rotary, positions=rope.positions.to(torch.int32))


QUANTIZERS: dict[str, type[KVQuantizer]] = {
    cls.name: cls for cls in (KIVI, FlexGen, KIVIOutlier, FlexGenOutlier, HQQ, KIVIRot, FlexGenRot, KVQuant)
}


def get_quantizer(name: str, **kwargs) -> KVQuantizer:
    """The quantizer called ``name`` (``quant=`` in configs)."""
    if name not in QUANTIZERS:
        raise ConfigError(f"quant={name!r} is not a quantizer", f"allowed: {', '.join(QUANTIZERS)}")
    check_params(f"quant={name}", QUANTIZERS[name], kwargs, "quant")
    return QUANTIZERS[name](**kwargs)
