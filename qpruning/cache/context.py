"""Whether a qpruning forward pass is running, for the storage layer's own checks.

The attention function that qpruning registers with transformers receives the attention module and the query,
key and value tensors, but not the cache object. A forward pre-hook on the decoder (installed by
``KVCompressor.attach``) publishes what the forward needs (:class:`qpruning.attention.ForwardContext`: the
compressor, the cache, per-prompt state) here for the duration of that forward pass. A context variable, not a
global: concurrent forwards in other threads or tasks see their own value. The cache only asks whether one is
running (a compressed layer can only be read by qpruning's attention); it never looks inside.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

_ACTIVE: ContextVar[object | None] = ContextVar("qpruning_active_forward", default=None)


def active_forward() -> object | None:
    """What the qpruning forward pass in progress published, or None outside one."""
    return _ACTIVE.get()


def set_active_forward(context: object | None) -> Token:
    """Publish ``context`` for the forward pass in progress; returns a token for :func:`reset_active_forward`."""
    return _ACTIVE.set(context)


def reset_active_forward(token: Token) -> None:
    _ACTIVE.reset(token)
