"""Mistakes in what a user gave (a configuration, a data file, a path) and how they are reported.

Every such mistake raises a :class:`UserError`: ``what`` was wrong and, where it helps, what is ``allowed``.
The command-line entries (``python run.py``, ``qpruning run|optimize``, ``python -m qpruning.report``) report it
as one line on stderr and exit with status 2::

    qpruning: error: bits=3 is not a bit width; allowed: 2, 4, 8 or 16

with no traceback, unless the user asks for one (``HYDRA_FULL_ERROR=1``, ``QPRUNING_DEBUG=1`` or ``--debug``).
The subclasses also derive from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``), so library code and tests that catch those keep working. Anything else that escapes is a
bug in qpruning and keeps its traceback.

The ``check_*`` helpers validate one user-typed value each, by type first: ``bits=4.0`` is a float, not a bit
width, and is refused here rather than crashing later in a reshape.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import sys
from collections.abc import Collection, Iterator

EXIT_USER_ERROR = 2
PREFIX = "qpruning: error: "
DEBUG_ENV = ("QPRUNING_DEBUG", "HYDRA_FULL_ERROR")

logger = logging.getLogger(__name__)


class UserError(Exception):
    """Something the user gave is wrong. ``what``: the mistake (name the key or file); ``allowed``: the fix."""

    exit_code = EXIT_USER_ERROR  # what the command line exits with

    def __init__(self, what: str, allowed: str | None = None) -> None:
        self.what = what
        self.allowed = allowed
        super().__init__(what if not allowed else f"{what}; {allowed}")

    def line(self) -> str:
        """The one line the command line prints."""
        return PREFIX + " ".join(str(self).split())


class ConfigError(UserError, ValueError):
    """A configuration value (a Hydra key, a dataclass field) that is not allowed."""


class DataError(UserError, ValueError):
    """A data or input file that exists but cannot be used (not JSON, empty, missing fields)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the configuration names does not exist."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """Whether the user asked for tracebacks (``QPRUNING_DEBUG=1``, ``HYDRA_FULL_ERROR=1`` or ``--debug``)."""
    if any(os.environ.get(name, "") not in ("", "0") for name in DEBUG_ENV):
        return True
    return argv is not None and "--debug" in argv


@contextlib.contextmanager
def reported(debug: bool | None = None) -> Iterator[None]:
    """Within the block, a :class:`UserError` ends the process with its one line on stderr and status 2."""
    try:
        yield
    except UserError as exc:
        if debug_requested() if debug is None else debug:
            raise
        for handler in logging.getLogger().handlers:  # what was logged before comes out before the line
            with contextlib.suppress(Exception):
                handler.flush()
        sys.stdout.flush()
        sys.stderr.write(exc.line() + "\n")
        sys.stderr.flush()
        raise SystemExit(exc.exit_code) from None


# -- one value at a time ------------------------------------------------------------------------------------------


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def is_int(value: object) -> bool:
    """A whole number typed as one (``4``), not a bool, a float (``4.0``) or a string (``"4"``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A number (``0.5`` or ``1``), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(
    key: str,
    value: object,
    *,
    minimum: int | None = None,
    choices: Collection[int] | None = None,
    optional: bool = False,
    meaning: str = "",
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a whole number (in ``choices``, at least ``minimum``)."""
    if value is None and optional:
        return
    if choices is not None:
        allowed = "allowed: " + ", ".join(map(str, choices)) + (" or null" if optional else "")
    elif minimum is not None:
        allowed = f"allowed: a whole number >= {minimum}" + (" or null" if optional else "")
    else:
        allowed = "allowed: a whole number" + (" or null" if optional else "")
    if meaning:
        allowed += f" ({meaning})"
    if not is_int(value):
        kind = "a float, not a whole number" if is_real(value) else "not a number" if value is not None else "missing"
        raise ConfigError(f"{key}={_shown(value)} is {kind}", allowed)
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={value} is not supported", allowed)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} is below {minimum}", allowed)


def check_bool(key: str, value: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` is ``true`` or ``false`` (not ``1``, ``"yes"`` or ``maybe``)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={_shown(value)} is not a boolean", "allowed: true or false")


def check_real(
    key: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = True,
    optional: bool = False,
    meaning: str = "",
    allowed: str | None = None,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a number in ``(low, high]`` (``[low, high]`` if closed).

    ``allowed``: the message's second half, when the generic one ("a number in (0, 1]") says too little.
    """
    if value is None and optional:
        return
    bounds = ""
    if low is not None or high is not None:
        bounds = f" in {'(' if low_open else '['}{_number(low, '-inf')}, {_number(high, 'inf')}]"
    if allowed is None:
        allowed = f"allowed: a number{bounds}" + (" or null" if optional else "") + (f" ({meaning})" if meaning else "")
    if not is_real(value) or value != value:  # NaN is not a number a user means
        raise ConfigError(f"{key}={_shown(value)} is not a number", allowed)
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        raise ConfigError(f"{key}={value} is out of range", allowed)


def check_params(what: str, cls: type, params: Collection[str], prefix: str) -> None:
    """Raise :class:`ConfigError` for a parameter that the dataclass ``cls`` does not take (``pruner.windw=``)."""
    import dataclasses

    accepted = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]} is not a parameter of {what}", f"allowed: {', '.join(accepted)}")


def _number(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"


def check_choice(key: str, value: object, choices: Collection[object], *, optional: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value is None and optional:
        return
    if not any(type(choice) is type(value) and choice == value for choice in choices):
        names = [str(c) for c in choices] + (["null"] if optional else [])
        allowed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise ConfigError(f"{key}={_shown(value)} is not allowed", f"allowed: {allowed}")
