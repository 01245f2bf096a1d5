"""Which compressed cache the running forward pass uses.

The attention function that qpruning registers with transformers receives the attention module and the query,
key and value tensors, but not the cache object. A forward pre-hook on the decoder (installed by
``KVCompressor.attach``) publishes the forward's cache here for the duration of that forward pass. A context
variable, not a global: concurrent forwards in other threads or tasks see their own value.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qpruning.cache.cache import QPrunedCache

_ACTIVE: ContextVar[QPrunedCache | None] = ContextVar("qpruning_active_cache", default=None)


def active_cache() -> QPrunedCache | None:
    """The compressed cache of the forward pass in progress, or None outside one."""
    return _ACTIVE.get()


def set_active_cache(cache: QPrunedCache | None):
    """Publish ``cache`` for the forward pass in progress; returns a token for :func:`reset_active_cache`."""
    return _ACTIVE.set(cache)


def reset_active_cache(token) -> None:
    _ACTIVE.reset(token)
