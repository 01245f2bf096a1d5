"""The fused Triton backend, optional at import time: nothing here imports Triton.

Triton is imported only when a compressed layer given :func:`fused_attention` runs (on CUDA with
``kernel=auto|on``, or on a CPU with ``kernel=on`` under ``TRITON_INTERPRET=1``); without Triton or a GPU, the
compressor gives layers the PyTorch reference (:mod:`qpruning.backends.reference`).

- :mod:`qpruning.backends.triton.kernel`: the device code (``@triton.jit`` functions);
- :mod:`qpruning.backends.triton.heuristics`: a segment's layout, block sizes, warps and splits;
- :mod:`qpruning.backends.triton.launch`: the host launcher, ``attend_segments(segments, query, scaling)``; on
  CPU tensors it runs under Triton's interpreter (``TRITON_INTERPRET=1`` set before it is imported), which is how
  it is tested;
- :mod:`qpruning.backends.triton.compile_check`: compiles every kernel variant for sm_80/sm_90 on a machine
  without a GPU and reports registers, spills and shared memory
  (``python -m qpruning.backends.triton.compile_check``, ``make compile-check``).

See ``docs/kernels.md``.
"""

from __future__ import annotations

import logging

from qpruning.backends.triton.runtime import available, interpreting, triton_installed

__all__ = ["available", "fused_attention", "interpreting", "triton_installed"]


def fused_attention(segments, query, scaling, terms=None, **options):
    """Attention of ``query`` over a compressed layer's ``segments``; equals
    :func:`qpruning.backends.reference.reference_attention` (bf16-level).

    Decode steps (``q_len == 1``) run the fused kernel; longer queries (a question appended after the context,
    chunked prefill) take the PyTorch reference path, which handles the causal mask among the new tokens, and so
    do calls with :class:`~qpruning.cache.terms.AttentionTerms` the kernel does not implement (soft-capping,
    sinks, sliding windows; logged once). ``options`` go to :func:`qpruning.backends.triton.launch.attend_segments`.
    """
    if query.shape[2] != 1 or (terms is not None and not terms.plain):
        from qpruning.backends.reference import reference_attention

        if terms is not None and not terms.plain:
            _log_fallback(terms)
            return reference_attention(segments, query, scaling, terms)
        return reference_attention(segments, query, scaling)
    from qpruning.backends.triton.launch import attend_segments

    return attend_segments(segments, query, scaling, **options)


_fallbacks_logged: set[tuple[bool, bool, bool]] = set()


def _log_fallback(terms) -> None:
    kind = (terms.softcap is not None, terms.sinks is not None, terms.window is not None)
    if kind not in _fallbacks_logged:
        _fallbacks_logged.add(kind)
        names = [n for n, on in zip(("logit soft-capping", "attention sinks", "a sliding window"), kind) if on]
        logging.getLogger(__name__).info(
            "the fused kernel does not implement %s: those layers decode through the PyTorch reference",
            " and ".join(names),
        )
