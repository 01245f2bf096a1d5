"""Launch heuristics of the fused decode kernel: the layout of a segment, block sizes, warps, splits.

Shared by the launcher (:mod:`qpruning.backends.triton.launch`) and ``compile_check``. No autotuning: see
:func:`kernel_config` and :func:`split_rows`, and ``docs/kernels.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from qpruning.cache.quantized import GroupAxis, QuantizedTensor
from qpruning.cache.segments import Segment

LOG2E = 1.4426950408889634

# Axis codes of the kernel's K_AXIS / V_AXIS constexprs.
AXIS_PLAIN = 0  # a 16-bit segment: no codes, no scales
AXIS_CHANNELS = 1  # per-token groups of channels: scale/zero [n, head_dim // group]
AXIS_TOKENS = 2  # per-channel groups of tokens: scale/zero [n // group, head_dim]

# Operand precision of the kernel's matmuls (the DOT constexpr).
DOT_FP32 = 0  # float32 operands
DOT_BF16 = 1  # bfloat16 operands, float32 accumulation (the GPU default)
DOT_BF16_EMULATED = 2  # operands rounded to bfloat16, multiplied in float32 (the interpreter's stand-in for 1)

# ``dot=`` option -> (DOT, tl.dot's input_precision). "fp32" is exact float32 everywhere (FMA on a GPU: a
# correctness mode for tests), "tf32" uses TF32 tensor cores on a GPU; the interpreter ignores the precision.
DOT_MODES = {
    "fp32": (DOT_FP32, "ieee"),
    "tf32": (DOT_FP32, "tf32"),
    "bf16": (DOT_BF16, "tf32"),
    "bf16_emulated": (DOT_BF16_EMULATED, "ieee"),
}

BLOCK_G_MIN = 16  # tl.dot needs M >= 16 on GPUs: the group of query heads is padded to 16
BLOCK_O = 16  # outliers handled per step of the sparse correction
TARGET_PROGRAMS_PER_SM = 4  # split rows until a launch has about this many programs per SM
BLOCK_N = 64  # tokens per block (at most one per-channel group of tokens)
MERGE_WARPS = 2
MAXNREG = 128  # register cap of 8-warp programs (two per SM)
MERGE_BLOCK_S = 16  # splits merged per step

_sm_counts: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _sm_counts:
        _sm_counts[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _sm_counts[index]


def _axis_code(axis: GroupAxis) -> int:
    return AXIS_TOKENS if axis is GroupAxis.TOKENS else AXIS_CHANNELS


@dataclass(frozen=True)
class Layout:
    """How a segment's keys and values are stored: what specializes the segment kernel.

    ``bits`` 16 means a plain 16-bit segment (axes ``AXIS_PLAIN``, groups 1).
    """

    bits: int
    k_axis: int
    v_axis: int
    k_group: int
    v_group: int
    head_dim: int

    @property
    def planes(self) -> int:
        """Codes per byte (1 for 16-bit segments)."""
        return 1 if self.bits == 16 else 8 // self.bits

    @property
    def byte_cols(self) -> int:
        """Bytes (packed) or numbers (16-bit) per token and row: ``head_dim * bits / 8``."""
        return self.head_dim // self.planes


def segment_layout(segment: Segment, head_dim: int) -> Layout:
    keys, values = segment.keys, segment.values
    if isinstance(keys, QuantizedTensor):
        if not isinstance(values, QuantizedTensor) or values.bits != keys.bits:
            raise ValueError("A quantized segment needs keys and values quantized with the same bits")
        layout = Layout(
            keys.bits, _axis_code(keys.axis), _axis_code(values.axis), keys.group_size, values.group_size, head_dim
        )
    else:
        layout = Layout(16, AXIS_PLAIN, AXIS_PLAIN, 1, 1, head_dim)
    if head_dim % layout.planes:
        raise ValueError(f"head_dim={head_dim} is not a multiple of the {layout.planes} codes packed per byte")
    return layout


def kernel_config(
    layout: Layout,
    group: int,
    *,
    uniform: bool = True,
    k_outliers: bool = False,
    v_outliers: bool = False,
    dot: int = DOT_BF16,
    precision: str = "tf32",
    fold_k: bool = False,
    block_n: int = BLOCK_N,
    num_warps: int | None = None,
    maxnreg: int | None = None,
) -> tuple[dict, dict]:
    """The segment kernel's constexprs and launch options (``num_warps``, ``maxnreg``) for one layout; launches
    and ``compile_check`` share it.

    Heuristics, no autotuning: blocks of ``BLOCK_N`` tokens (no more than a per-channel group of tokens, so that a
    block shares one scale/zero per channel), the group of query heads padded to 16 (``tl.dot``'s minimum), the
    byte columns padded to a power of two (at least 16), 8 warps for 64-token blocks and 4 below, and with 8
    warps a cap of 128 registers per thread (two programs per SM instead of one) where it causes no spills on
    sm_80/sm_90 (``compile_check``: bf16 operands, no outliers, no ``fold_k``, not 2 bits). ``maxnreg=0``
    lifts the cap.
    """
    for axis, g in ((layout.k_axis, layout.k_group), (layout.v_axis, layout.v_group)):
        if axis == AXIS_TOKENS:
            block_n = min(block_n, g)
            if g % block_n:
                raise ValueError(f"block_n={block_n} must divide the token group size {g}")
    block_c = max(16, triton.next_power_of_2(layout.byte_cols))
    if num_warps is None:
        num_warps = 8 if block_n >= 64 else 4
    if maxnreg is None:
        # Only for the bf16 path without outliers and with 1 or 2 planes: the outlier correction needs ~180
        # registers, 2-bit codes (4 planes), float32 operands and fold_k spill at 128.
        capped = dot == DOT_BF16 and not (k_outliers or v_outliers or fold_k) and layout.bits != 2
        maxnreg = MAXNREG if num_warps == 8 and capped else 0
    launch = {"num_warps": num_warps}
    if maxnreg:
        launch["maxnreg"] = maxnreg
    constexprs = dict(
        D=layout.head_dim, DB=layout.byte_cols, P=layout.planes, BITS=layout.bits,
        K_AXIS=layout.k_axis, V_AXIS=layout.v_axis, K_GROUP=layout.k_group, V_GROUP=layout.v_group,
        UNIFORM=uniform, K_OUTLIERS=k_outliers, V_OUTLIERS=v_outliers, DOT=dot,
        BLOCK_G=max(BLOCK_G_MIN, triton.next_power_of_2(group)), BLOCK_N=block_n, BLOCK_C=block_c,
        BLOCK_O=BLOCK_O, EVEN_C=block_c == layout.byte_cols, FOLD_K=fold_k, PRECISION=precision,
    )
    return constexprs, launch


def split_rows(
    max_length: int, rows: int, block_n: int, device: torch.device, split_tokens: int | None = None
) -> tuple[int, int]:
    """``(tokens per split, splits)`` for rows of up to ``max_length`` tokens (flash-decoding).

    By default a row is split so that the launch has about ``TARGET_PROGRAMS_PER_SM`` programs per streaming
    multiprocessor (long rows and small batches get many splits, large batches one), a whole number of blocks
    per split; ``split_tokens`` forces the tokens per split (rounded up to a whole block).
    """
    blocks = max(1, triton.cdiv(max_length, block_n))
    if split_tokens is None:
        target = TARGET_PROGRAMS_PER_SM * _sm_count(device)
        per_row = max(1, min(blocks, triton.cdiv(target, max(1, rows))))
        split_blocks = triton.cdiv(blocks, per_row)
    else:
        split_blocks = max(1, triton.cdiv(split_tokens, block_n))
    split = split_blocks * block_n
    return split, max(1, triton.cdiv(max_length, split))
