"""Whether the fused kernel can run here (Triton installed, a CUDA device, or Triton's interpreter); imports no
Triton."""

from __future__ import annotations

import importlib.util
import os


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def available() -> bool:
    """True when the fused decode-attention kernel can run here on the GPU (Triton installed, a CUDA device)."""
    import torch

    return triton_installed() and torch.cuda.is_available()


def interpreting() -> bool:
    """True when Triton's interpreter is requested (``TRITON_INTERPRET``): the kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
