"""``compat=paper``'s quantizers: "KIVI" and "FlexGen" as the paper's code computed them, through transformers'
HQQ quantized cache.

The paper's scripts (GitHub ``zhzihao/QPruningKV``) quantize with ``cache_implementation="quantized"``, backend
HQQ, ``q_group_size`` 64, ``axis_key`` 1 ("kivi") or 0 ("flexgen"), ``axis_value`` left at 0, and
``residual_length`` = the number of generated tokens. So, per layer:

- the pruned prompt, window included, is quantized **once**, as one tensor ``[batch, rows, tokens, head_dim]``
  flattened: HQQ axis 1 groups 64 consecutive numbers (64 channels of one token and row), axis 0 views the
  flattened tensor as ``[64, numel / 64]`` and groups its columns (one channel, rows spread across heads and tokens).
  The grouping therefore depends on the layer's whole tensor, not on one row;
- generated tokens are never quantized (:attr:`HQQCache.residual_length` is never reached);
- ``optimize`` is explicit: ``False`` (default) is plain min-max over HQQ's groups, what the hqq of the paper's
  time did by default (hqq <= 0.2.6); ``True`` runs HQQ's proximal optimizer (hqq >= 0.2.7's default);
- the outlier variants ("kvquant" in the paper's code): every ``|x| > 6`` is set aside exactly, replaced by 0 in
  the tensor HQQ quantizes (the zeros count in their groups' min and max), and written back after dequantization.

Codes are held packed (2/4/8 bits a number), scales and zeros as HQQ leaves them in the compute dtype (the model's),
outliers as an int32 flat index and a value in the model's dtype (exact): :meth:`HQQCacheTensor.nbytes` counts them all. Values are
computed by hqq's own ``Quantizer.quantize`` / ``dequantize`` (tests compare with tests/paper_reference.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qpruning.cache.packing import pack, unpack
from qpruning.cache.quantized import GroupAxis, QuantizedTensor
from qpruning.cache.quantizers import HQQ, KVQuantizer
from qpruning.cache.rope import KeyRope
from qpruning.errors import ConfigError, check_choice

NEVER = 1 << 40  # residual_length: generated tokens are never quantized (the paper's residual = max_new_tokens)
PAPER_OUTLIER_THRESHOLD = 6.0
HQQ_AXES = (0, 1)


@dataclass
class HQQCacheTensor(QuantizedTensor):
    """A ``[n, d]`` tensor quantized by hqq as one flattened tensor (what the HQQ cache holds for a layer)."""

    hqq_axis: int = 1
    compute_dtype: torch.dtype = torch.float16

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        from hqq.core.quantize import Quantizer

        codes = unpack(self.packed, self.bits).reshape(-1)
        view = (-1, self.group_size) if self.hqq_axis == 1 else (self.group_size, -1)
        meta = {"nbits": self.bits, "group_size": self.group_size, "shape": (self.num_tokens, self.head_dim),
                "scale": self.scale, "zero": self.zero, "axis": self.hqq_axis, "packing": None,
                "compute_dtype": self.compute_dtype}
        out = Quantizer.dequantize(codes.reshape(view), meta).to(dtype)
        if self.outlier_index is not None and self.outlier_index.numel():
            assert self.outlier_value is not None  # the index and the values are set together
            out.view(-1)[self.outlier_index.long()] = self.outlier_value.to(dtype)
        return out

    def dequantize_into(self, out: torch.Tensor) -> None:
        """Dequantize into ``out`` (``[rows, length, d]``) through hqq, as :meth:`dequantize`: the base class's
        in-place arithmetic assumes this package's groups and ``code * scale + zero``, not HQQ's layer-wide
        groups and ``(code - zero) * scale``."""
        out.copy_(self.dequantize(torch.float32).view(out.shape))

    @property
    def num_tokens(self) -> int:
        return self.packed.numel() * 8 // self.bits // self.head_dim


@dataclass
class HQQCache(KVQuantizer):
    """The paper code's quantizer: transformers' HQQ cache with the paper scripts' arguments (see the module).

    Args:
        source: the quantizer it stands for, ``kivi`` (keys axis 1) or ``flexgen`` (keys axis 0); values axis 0.
        optimize: HQQ's optimizer (default off: the hqq of the paper's time).
        outlier_threshold: ``None``, or 6 for the outlier variants (``kivi_outlier``, ``flexgen_outlier``).
    """

    source: str = "kivi"
    optimize: bool = False
    outlier_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.residual_length is None:
            self.residual_length = NEVER
        super().__post_init__()
        check_choice("quant", self.source, ("kivi", "flexgen", "kivi_outlier", "flexgen_outlier"))
        if self.outliers is not None:
            raise ConfigError("compat=paper: the paper's outliers are |x| > 6, not an OutlierFilter",
                              "allowed: quant=kivi_outlier or flexgen_outlier (threshold 6)")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.source

    @property
    def hqq_key_axis(self) -> int:
        return 0 if self.source.startswith("flexgen") else 1

    @property
    def key_axis(self) -> GroupAxis:  # type: ignore[override]
        return GroupAxis.CHANNELS  # for the accounting of nominal budgets only: every token is quantized

    @property
    def value_axis(self) -> GroupAxis:  # type: ignore[override]
        return GroupAxis.CHANNELS

    def needs_reference_attention(self, bits: int) -> bool:
        return bits < 16  # HQQ's codes are dequantized through hqq by the reference path only

    def validate_head_dim(self, head_dim: int) -> None:
        if self.enabled and head_dim % self.group_size and self.group_size % head_dim:
            raise ValueError(f"head_dim={head_dim}: HQQ's groups of {self.group_size} need a head_dim that divides "
                             "or is divided by the group size")

    def quantize_keys(
        self, x: torch.Tensor, scale_dtype: torch.dtype, rope: KeyRope | None = None
    ) -> QuantizedTensor:
        return self.quantize_layer(x, self.hqq_key_axis)

    def quantize_values(self, x: torch.Tensor, scale_dtype: torch.dtype) -> QuantizedTensor:
        return self.quantize_layer(x, 0)

    def quantize_layer(self, x: torch.Tensor, axis: int) -> HQQCacheTensor:
        """Quantize ``x`` ``[n, d]`` (a layer's rows laid end to end, i.e. its ``[batch, rows, tokens, d]`` tensor
        flattened) as the HQQ cache does, in ``x``'s dtype."""
        from hqq.core.quantize import Quantizer

        check_choice("hqq axis", axis, HQQ_AXES)
        n, d = x.shape
        if (n * d) % self.group_size:
            raise ValueError(f"{n} x {d} numbers do not split into HQQ groups of {self.group_size}")
        outlier_index = outlier_value = None
        if self.outlier_threshold is not None:
            outliers = x.abs() > self.outlier_threshold
            outlier_index = outliers.reshape(-1).nonzero().squeeze(-1).to(torch.int32)
            outlier_value = x.reshape(-1)[outlier_index.long()]  # exact, in the model's dtype
            x = x.masked_fill(outliers, 0)
        codes, meta = Quantizer.quantize(
            x.contiguous(), nbits=self.bits, channel_wise=True, group_size=self.group_size, optimize=self.optimize,
            round_zero=False, axis=axis, bitpack=False, compute_dtype=x.dtype, device=x.device,
        )
        meta["compute_dtype"] = x.dtype
        codes, meta = Quantizer.cuda(codes, meta=meta, device=x.device)  # scale and zero in the compute dtype
        return HQQCacheTensor(
            packed=pack(codes.reshape(-1, self.group_size), self.bits),
            scale=meta["scale"], zero=meta["zero"], bits=self.bits, group_size=self.group_size,
            axis=GroupAxis.CHANNELS, head_dim=d, outlier_index=outlier_index, outlier_value=outlier_value,
            hqq_axis=axis, compute_dtype=x.dtype,
        )

    def describe(self) -> str:
        return f"{self.source} (paper: HQQ cache, optimize={self.optimize}) {self.bits}-bit g{self.group_size}"


def paper_quantizer(quantizer: KVQuantizer) -> KVQuantizer:
    """The ``compat=paper`` counterpart of a configured quantizer: kivi / flexgen (and ``_outlier``) become
    :class:`HQQCache`; ``hqq`` too, by its layout, keeping its ``optimize``."""
    if isinstance(quantizer, HQQCache):
        return quantizer
    if quantizer.rotate:
        raise ConfigError(f"quant={quantizer.name} rotates keys and values, which the paper's code never did",
                          "allowed with compat=paper: kivi, flexgen, kivi_outlier, flexgen_outlier, hqq (rotate=false); "
                          "or compat=methods")
    name = quantizer.name
    optimize = False
    if name == "hqq":
        assert isinstance(quantizer, HQQ)
        name, optimize = quantizer.layout, quantizer.optimize
    if name not in ("kivi", "flexgen", "kivi_outlier", "flexgen_outlier"):
        raise ConfigError(f"quant={name} has no compat=paper counterpart",
                          "allowed with compat=paper: kivi, flexgen, kivi_outlier, flexgen_outlier, hqq")
    return HQQCache(
        bits=quantizer.bits, group_size=quantizer.group_size, source=name, optimize=optimize,
        outlier_threshold=PAPER_OUTLIER_THRESHOLD if name.endswith("_outlier") else None,
    )
