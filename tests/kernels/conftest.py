"""The decode kernels' tests run on CPU through Triton's interpreter unless a GPU is here.

``TRITON_INTERPRET`` must be set before the kernels are defined (``triton.jit`` reads it when it decorates), so
it is set here, before any test module of this folder imports :mod:`qpruning.kernels.decode_attention`. On a
GPU machine, run with ``TRITON_INTERPRET=0`` to test the compiled kernels on the device instead.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
