"""Fused GPU kernels (Triton), optional at import time.

Nothing here is imported unless a compressed layer runs on CUDA with ``kernel=auto|on`` (or on a CPU with
``kernel=on`` under ``TRITON_INTERPRET=1``); without Triton or a GPU, the PyTorch reference path of
:mod:`qpruning.cache.layer` is used.

- :mod:`qpruning.kernels.decode_attention`: decode attention straight from the packed cache
  (``attend_layer(layer, query, scaling)``, ``attend_segments(segments, query, scaling)``); on CPU tensors it runs
  under Triton's interpreter (``TRITON_INTERPRET=1`` set before it is imported), which is how it is tested.
- :mod:`qpruning.kernels.compile_check`: compiles every kernel variant for sm_80/sm_90 on a machine without a
  GPU and reports registers, spills and shared memory (``python -m qpruning.kernels.compile_check``).

See ``docs/kernels.md``.
"""

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


def fused_attention(layer, query, scaling):
    """Attention over a compressed layer straight from its packed segments (see ``decode_attention``).

    Decode steps (one new token) run the fused kernel; longer queries take the PyTorch reference path.
    """
    from qpruning.kernels.decode_attention import attend_layer

    return attend_layer(layer, query, scaling)
