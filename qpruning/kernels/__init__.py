"""Fused GPU kernels (Triton), optional at import time.

Nothing here is imported unless a compressed layer runs on CUDA with ``kernel=auto|on``; without Triton or a
GPU, the PyTorch reference path of :mod:`qpruning.cache.layer` is used.
"""

from __future__ import annotations

import importlib.util


def available() -> bool:
    """True when the fused decode-attention kernel can run here (Triton installed, a CUDA device present)."""
    import torch

    if importlib.util.find_spec("triton") is None or not torch.cuda.is_available():
        return False
    return importlib.util.find_spec("qpruning.kernels.decode_attention") is not None


def fused_attention(layer, query, scaling):
    """Attention over a compressed layer straight from its packed segments (see ``decode_attention``)."""
    from qpruning.kernels.decode_attention import attend_layer

    return attend_layer(layer, query, scaling)
