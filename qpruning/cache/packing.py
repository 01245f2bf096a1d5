"""Bit packing of 2/4/8-bit codes into bytes along the last dimension.

Layout (the fused decode kernels in :mod:`qpruning.backends.triton` read exactly this): for ``bits`` in {2, 4, 8},
``8 // bits`` consecutive codes of the last dimension share one byte, the first code in the lowest bits.
For 4 bits, byte ``j`` holds codes ``2j`` (bits 0-3) and ``2j+1`` (bits 4-7); for 2 bits, byte ``j`` holds codes
``4j .. 4j+3`` at bit offsets 0, 2, 4, 6. A ``[..., d]`` tensor of codes becomes ``[..., d * bits // 8]`` uint8.
"""

from __future__ import annotations

import torch

PACKABLE_BITS = (2, 4, 8)


def codes_per_byte(bits: int) -> int:
    if bits not in PACKABLE_BITS:
        raise ValueError(f"Cannot pack {bits}-bit codes; packable widths are {PACKABLE_BITS}")
    return 8 // bits


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` along the last dimension into uint8."""
    per_byte = codes_per_byte(bits)
    if codes.shape[-1] % per_byte:
        raise ValueError(f"The last dimension ({codes.shape[-1]}) must be a multiple of {per_byte} to pack {bits}-bit codes")
    codes = codes.to(torch.uint8)
    if per_byte == 1:
        return codes.contiguous()
    grouped = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per_byte, per_byte)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    # The codes of one byte occupy disjoint bit ranges, so their sum is their bitwise OR.
    return (grouped << shifts).sum(dim=-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``[..., n]`` uint8 -> ``[..., n * 8 // bits]`` uint8 codes."""
    per_byte = codes_per_byte(bits)
    if per_byte == 1:
        return packed
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    codes = (packed.unsqueeze(-1) >> shifts) & mask
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * per_byte)
