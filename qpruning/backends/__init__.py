"""Attention over a compressed layer's segments: the backends a compressed layer is given when it is compressed.

A backend is a function ``backend(segments, query, scaling) -> output``: ``segments`` are the layer's
:class:`~qpruning.cache.segments.Segment` list in token order (the ``q`` new tokens at the end of every row),
``query`` is ``[batch, q_heads, q, head_dim]``, and the output is ``[batch, q, q_heads, head_dim]``.

- :func:`qpruning.backends.reference.reference_attention`: dequantize into padded rows, exact float32 attention
  (PyTorch; every device, every query length);
- :func:`qpruning.backends.triton.fused_attention`: decode steps through the fused Triton kernel, read in place
  from the packed codes (:mod:`qpruning.backends.triton`; Triton is imported only when it runs).

:class:`~qpruning.compressor.KVCompressor` chooses one per layer (``kernel=auto|on|off``). Backends read the
storage of :mod:`qpruning.cache` and import nothing else of qpruning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from qpruning.backends.reference import reference_attention
from qpruning.cache.segments import Segment

Backend = Callable[[Sequence[Segment], torch.Tensor, float], torch.Tensor]

__all__ = ["Backend", "reference_attention"]
