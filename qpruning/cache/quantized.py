"""Grouped asymmetric min-max quantization with real packed storage (the paper's Eq. 4-5).

A key or value tensor is handled as ``[n, d]``: ``n`` tokens (the rows of several heads laid end to end),
``d = head_dim`` channels. A *group* is a run of ``group_size`` numbers that share one scale and one zero:

- :attr:`GroupAxis.CHANNELS`: a group is ``group_size`` consecutive channels of one token ("per-token"
  quantization). FlexGen quantizes keys and values this way; KIVI quantizes values this way.
  ``scale``/``zero`` have shape ``[n, d // group_size]``.
- :attr:`GroupAxis.TOKENS`: a group is ``group_size`` consecutive tokens of one channel ("per-channel"
  quantization). KIVI quantizes keys this way, because key outliers live in fixed channels (KIVI, Liu et al.
  2024, Sec. 3). ``scale``/``zero`` have shape ``[n // group_size, d]``.

Codes are ``Q = round((x - z) / s)`` with ``z`` the group minimum and ``s = (max - min) / (2**bits - 1)``,
and ``x' = Q * s + z``. Scales and zeros are stored in a 16-bit float (the model's dtype when it is 16-bit), the
zero rounded down and the scale up so that the stored grid still spans the group; codes are rounded against the
stored scale and zero, so every number is within half a stored step of its original, in float16 and bfloat16
alike.
Optionally the largest-magnitude numbers (a fraction, or those above an absolute threshold) are kept exactly
as sparse 16-bit outliers and excluded from the groups' min/max (KVQuant, Hooper et al. 2024).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from qpruning.cache.packing import pack, unpack
from qpruning.errors import ConfigError, check_choice, check_real


class GroupAxis(str, enum.Enum):
    """Which way a quantization group runs through a ``[tokens, channels]`` tensor."""

    TOKENS = "tokens"
    CHANNELS = "channels"


OUTLIER_SCOPES = ("tensor", "vector")  # what OutlierFilter.fraction is a fraction of
OUTLIER_BYTES = 4 + 2  # an outlier's int32 position and 16-bit value
THRESHOLD_OUTLIER_ESTIMATE = 0.01  # the paper: |x| > 6 is "roughly the top 1%"


@dataclass(frozen=True)
class OutlierFilter:
    """Numbers kept exactly, out of the quantization groups.

    Exactly one of ``fraction`` and ``threshold`` (every number with ``|x| > threshold``; the paper's Appendix B
    uses 6) is set. ``per`` says what ``fraction`` is a fraction of:

    - ``tensor``: the largest-magnitude ``fraction`` of each quantized tensor, e.g. 0.01 (the paper's Sec. 7.3);
    - ``vector``: per vector, its ``ceil(fraction * length)`` numbers farthest from the vector's median (either
      side): a token's channels for per-token groups, a channel's tokens within one group for per-channel groups
      (KVQuant's per-vector dense-and-sparse quantization, Hooper et al. 2024, Sec. 3.4, with the vectors cut at
      the groups and the outliers chosen online, not from calibrated thresholds).
    """

    fraction: float | None = 0.01
    threshold: float | None = None
    per: str = "tensor"

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.threshold is None):
            raise ConfigError("quant.outliers needs exactly one of fraction or threshold",
                              "allowed: fraction=0.01 or threshold=6, the other null")
        if self.fraction is not None:
            check_real("quant.outliers.fraction", self.fraction, low=0.0, high=1.0)
            if self.fraction == 1.0:
                raise ConfigError("quant.outliers.fraction=1.0 keeps every number", "allowed: a fraction in (0, 1)")
        if self.threshold is not None:
            check_real("quant.outliers.threshold", self.threshold, low=0.0)
        check_choice("quant.outliers.per", self.per, OUTLIER_SCOPES)
        if self.per == "vector" and self.fraction is None:
            raise ConfigError("quant.outliers.per=vector takes the fraction of each vector, and fraction is null",
                              "allowed: per=vector with a fraction (e.g. 0.01), or per=tensor with a threshold")

    def expected_count(self, n: int, d: int, group_size: int, axis: GroupAxis) -> float:
        """How many numbers of a ``[n, d]`` tensor quantized in groups of ``group_size`` along ``axis`` this filter
        keeps: exactly, per vector; ``fraction * n * d`` per tensor; an estimate (:data:`THRESHOLD_OUTLIER_ESTIMATE`)
        for a threshold. What exact budgets count (:func:`qpruning.cache.budget.tokens_for_budget`)."""
        if self.threshold is not None:
            return THRESHOLD_OUTLIER_ESTIMATE * n * d
        assert self.fraction is not None  # __post_init__: exactly one of fraction and threshold is set
        if self.per == "vector":
            if axis is GroupAxis.TOKENS:
                return (n // group_size) * d * math.ceil(self.fraction * group_size)
            return n * math.ceil(self.fraction * d)
        return self.fraction * n * d

    def mask(self, x: torch.Tensor, axis: GroupAxis = GroupAxis.CHANNELS, group_size: int = 1) -> torch.Tensor:
        """The outliers of ``x`` ``[n, d]`` (bool, same shape), quantized in groups of ``group_size`` along
        ``axis``."""
        magnitude = x.abs()
        if self.threshold is not None:
            return magnitude > self.threshold
        assert self.fraction is not None  # __post_init__: exactly one of fraction and threshold is set
        if self.per == "vector":
            return _vector_outliers(x.float(), self.fraction, axis, group_size)
        k = math.ceil(self.fraction * x.numel())
        if k == 0:
            return torch.zeros_like(x, dtype=torch.bool)
        flat = magnitude.flatten().float()
        top = torch.topk(flat, k, sorted=False).indices
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[top] = True
        return mask.view_as(x)



def _vector_outliers(x: torch.Tensor, fraction: float, axis: GroupAxis, group_size: int) -> torch.Tensor:
    """Per vector, the ``ceil(fraction * length)`` numbers of ``x`` ``[n, d]`` farthest from the vector's median.
    A vector is a token's ``d`` channels for per-token groups (CHANNELS), and a channel's ``group_size`` tokens of
    one group for per-channel groups (TOKENS: a group never spans two rows, so neither does a vector, and what a row
    keeps does not depend on the rows quantized with it)."""
    n, d = x.shape
    vectors = x.view(n // group_size, group_size, d).transpose(1, 2) if axis is GroupAxis.TOKENS else x
    k = math.ceil(fraction * vectors.shape[-1])
    mask = torch.zeros_like(vectors, dtype=torch.bool)
    if k and vectors.numel():
        deviation = (vectors - vectors.median(dim=-1, keepdim=True).values).abs()
        mask.scatter_(-1, torch.topk(deviation, k, dim=-1, sorted=False).indices, True)
    return mask.transpose(1, 2).reshape(n, d) if axis is GroupAxis.TOKENS else mask


def round_toward(x: torch.Tensor, dtype: torch.dtype, down: bool) -> torch.Tensor:
    """``x`` (float32) converted to ``dtype``, rounded toward -inf (``down``) or +inf instead of to nearest."""
    y = x.to(dtype)
    wrong_side = y.float() > x if down else y.float() < x
    limit = torch.full_like(y, -math.inf if down else math.inf)
    return torch.where(wrong_side, torch.nextafter(y, limit), y)


def _grouped(x: torch.Tensor, group_size: int, axis: GroupAxis) -> torch.Tensor:
    """View ``[n, d]`` as ``[a, b, group_size]`` with groups on the last dimension (a copy for TOKENS)."""
    n, d = x.shape
    if axis is GroupAxis.CHANNELS:
        return x.reshape(n, d // group_size, group_size)
    return x.reshape(n // group_size, group_size, d).transpose(1, 2)


def _ungrouped(g: torch.Tensor, n: int, d: int, axis: GroupAxis) -> torch.Tensor:
    if axis is GroupAxis.CHANNELS:
        return g.reshape(n, d)
    return g.transpose(1, 2).reshape(n, d)


def check_groupable(n: int, d: int, group_size: int, axis: GroupAxis) -> None:
    if axis is GroupAxis.CHANNELS and d % group_size:
        raise ConfigError(
            f"group_size={group_size} does not divide head_dim={d} (per-token groups run along the channels)",
            f"allowed here: {', '.join(str(g) for g in (32, 64, 128) if d % g == 0) or 'none'}",
        )
    if axis is GroupAxis.TOKENS and n % group_size:
        raise ValueError(f"{n} tokens cannot be split into per-channel groups of {group_size} tokens")


@dataclass
class QuantizedTensor:
    """A ``[n, d]`` tensor held as packed codes, 16-bit scales and zeros, and optional sparse outliers."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int
    axis: GroupAxis
    head_dim: int
    outlier_index: torch.Tensor | None = None
    outlier_value: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.packed.shape[0]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n, d = self.num_tokens, self.head_dim
        codes = unpack(self.packed, self.bits).to(torch.float32)
        grouped = _grouped(codes, self.group_size, self.axis)
        out = grouped * self.scale.float().unsqueeze(-1) + self.zero.float().unsqueeze(-1)
        out = _ungrouped(out, n, d, self.axis).to(dtype)
        if self.outlier_index is not None and self.outlier_index.numel():
            assert self.outlier_value is not None  # the index and the values are set together
            out.view(-1)[self.outlier_index.long()] = self.outlier_value.to(dtype)
        return out

    def dequantize_into(self, out: torch.Tensor) -> None:
        """Dequantize into ``out``, a float32 ``[rows, length, d]`` view (possibly strided, e.g. a slice of a
        larger buffer) of this tensor's ``rows * length`` tokens laid row by row.

        The same float32 arithmetic as :meth:`dequantize` (code times scale, then plus zero), written in place:
        no intermediate ``[n, d]`` result, no transposed copy for per-channel groups. The codes are not unpacked
        into a tensor of their own: the ``k``-th code of every byte, ``(byte >> k * bits) & mask`` (a uint8
        pass), is converted straight into every ``8 // bits``-th channel of ``out``; then ``out`` is scaled and
        shifted in place, each group by its own scale and zero.
        """
        rows, length, d = out.shape
        g = self.group_size
        per_byte = 8 // self.bits
        if (out.dtype != torch.float32 or self.num_outliers or (self.axis is GroupAxis.TOKENS and length % g)
                or g % per_byte):
            out.copy_(self.dequantize(torch.float32).view(rows, length, d))
            return
        if self.axis is GroupAxis.CHANNELS:
            shape, scale_shape = (rows, length, d // g, g), (rows, length, d // g, 1)
        else:
            shape, scale_shape = (rows, length // g, g, d), (rows, length // g, 1, d)
        target = out.view(shape)
        packed = self.packed.view(*shape[:-1], shape[-1] // per_byte)
        codes = target.view(*packed.shape, per_byte)
        mask = (1 << self.bits) - 1
        for k in range(per_byte):
            code = packed >> (k * self.bits) if k else packed
            if k < per_byte - 1:  # the top code of a byte needs no mask
                code = code & mask
            codes[..., k].copy_(code)
        target.mul_(self.scale.float().view(scale_shape)).add_(self.zero.float().view(scale_shape))

    def nbytes(self) -> dict[str, int]:
        outliers = 0
        if self.outlier_index is not None:
            outliers = _nbytes(self.outlier_index) + _nbytes(self.outlier_value)
        return {
            "packed": _nbytes(self.packed),
            "scales": _nbytes(self.scale),
            "zeros": _nbytes(self.zero),
            "outliers": outliers,
        }

    def cat_fields(self, parts: list[QuantizedTensor], rows: int) -> dict:
        """The fields beyond the base class's of :func:`cat_rows`' result, for a subclass that has some (parts
        of ``rows`` equal-length rows each, concatenated row by row)."""
        return {}

    @property
    def num_outliers(self) -> int:
        return 0 if self.outlier_index is None else int(self.outlier_index.numel())


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def quantize(
    x: torch.Tensor,
    bits: int,
    group_size: int,
    axis: GroupAxis,
    scale_dtype: torch.dtype = torch.float16,
    outliers: OutlierFilter | None = None,
    scale_zero: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` (``[n, d]``) to ``bits`` with min-max groups of ``group_size`` along ``axis``.

    ``scale_zero`` lets another algorithm (HQQ's optimizer) choose each group's scale and zero (shaped like the
    groups' ``[a, b]``); the codes are then computed against them in the same way.
    """
    if x.dim() != 2:
        raise ValueError(f"quantize expects a [tokens, channels] tensor, got shape {tuple(x.shape)}")
    n, d = x.shape
    check_groupable(n, d, group_size, axis)
    levels = (1 << bits) - 1
    xf = x.float()

    outlier_mask = outliers.mask(xf, axis, group_size) if outliers is not None else None
    grouped = _grouped(xf, group_size, axis)
    if scale_zero is None:
        if outlier_mask is not None:
            g_mask = _grouped(outlier_mask, group_size, axis)
            lo = grouped.masked_fill(g_mask, math.inf).amin(dim=-1)
            hi = grouped.masked_fill(g_mask, -math.inf).amax(dim=-1)
            # A group made only of outliers has no inliers to describe: any scale/zero will do.
            empty = torch.isinf(lo)
            lo = lo.masked_fill(empty, 0.0)
            hi = hi.masked_fill(empty, 0.0)
        else:
            lo, hi = grouped.amin(dim=-1), grouped.amax(dim=-1)
        # The stored zero is rounded down and the stored scale up, so that the stored grid still covers the group:
        # no number is clamped, and each is within half a stored step of its original. Rounding to nearest could
        # put the zero above the minimum or the top of the grid below the maximum, which clamps those numbers: at
        # 8 bits with bfloat16 scales (8-bit mantissa) they would land more than a step away.
        zero = round_toward(lo, scale_dtype, down=True)
        scale = round_toward((hi - zero.float()) / levels, scale_dtype, down=False)
    else:
        scale, zero = (t.to(scale_dtype) for t in scale_zero)

    s = scale.float().unsqueeze(-1)
    z = zero.float().unsqueeze(-1)
    # A constant group has scale 0: every number equals the zero, which its code 0 reproduces exactly.
    codes = torch.where(s > 0, (grouped - z) / torch.where(s > 0, s, 1.0), 0.0)
    codes = codes.round_().clamp_(0, levels).to(torch.uint8)
    packed = pack(_ungrouped(codes, n, d, axis), bits)

    outlier_index = outlier_value = None
    if outlier_mask is not None:
        flat_index = outlier_mask.flatten().nonzero().squeeze(-1)
        outlier_index = flat_index.to(torch.int32)
        outlier_value = x.flatten()[flat_index].to(scale_dtype)
    return QuantizedTensor(packed, scale, zero, bits, group_size, axis, d, outlier_index, outlier_value)


def cat_rows(parts: list[QuantizedTensor], rows: int) -> QuantizedTensor:
    """Concatenate quantized tensors that each hold ``rows`` equal-length rows laid end to end, row by row.

    Row ``r`` of the result is row ``r`` of ``parts[0]`` followed by row ``r`` of ``parts[1]``, and so on.
    Used to append a freshly quantized block of decoded tokens to every (batch item, head) row.
    """
    first = parts[0]
    d = first.head_dim
    lengths = [p.num_tokens // rows for p in parts]
    total = sum(lengths)

    def cat(field_of):
        tensors = [field_of(p) for p in parts]
        views = [t.reshape(rows, -1, t.shape[-1]) for t in tensors]
        return torch.cat(views, dim=1).reshape(-1, tensors[0].shape[-1])

    packed = cat(lambda p: p.packed)
    scale = cat(lambda p: p.scale)
    zero = cat(lambda p: p.zero)
    outlier_index = outlier_value = None
    if first.outlier_index is not None:
        indices, values = [], []
        offset = 0
        for part, length in zip(parts, lengths):
            assert part.outlier_index is not None and part.outlier_value is not None  # same quantizer as the first
            idx = part.outlier_index.long()
            row, within = idx // (length * d), idx % (length * d)
            indices.append(row * (total * d) + offset * d + within)
            values.append(part.outlier_value)
            offset += length
        outlier_index = torch.cat(indices).to(torch.int32)
        outlier_value = torch.cat(values)
    return type(first)(
        packed, scale, zero, first.bits, first.group_size, first.axis, d, outlier_index, outlier_value,
        **first.cat_fields(parts, rows),
    )
