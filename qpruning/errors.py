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
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # names for the type checker only (annotations are strings here: nothing is imported at run time)
    from _typeshed import DataclassInstance
    from typing_extensions import TypeIs

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


def is_int(value: object) -> TypeIs[int]:
    """A whole number typed as one (``4``), not a bool, a float (``4.0``) or a string (``"4"``).

    Any ``numbers.Integral`` (numpy's too); the type checker reads it as an ``int``, which it behaves as."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> TypeIs[float]:
    """A number (``0.5`` or ``1``), not a bool or a string.

    Any ``numbers.Real``; the type checker reads it as a ``float`` (an ``int`` included), which it behaves as."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(
    key: str,
    value: object,
    *,
    minimum: int | None = None,
    choices: Collection[int] | None = None,
    optional: bool = False,
    meaning: str = "",
    maximum: int | None = None,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a whole number (in ``choices``, in ``[minimum, maximum]``)."""
    if value is None and optional:
        return
    if choices is not None:
        allowed = "allowed: " + ", ".join(map(str, choices)) + (" or null" if optional else "")
    elif minimum is not None and maximum is not None:
        allowed = f"allowed: a whole number from {minimum} to {maximum}" + (" or null" if optional else "")
    elif minimum is not None:
        allowed = f"allowed: a whole number >= {minimum}" + (" or null" if optional else "")
    elif maximum is not None:
        allowed = f"allowed: a whole number <= {maximum}" + (" or null" if optional else "")
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
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key}={value} is above {maximum}", allowed)


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
        raise ConfigError(f"{prefix}.{unknown[0]} is not a parameter of {what}"
                          f"{nearest(unknown[0], accepted, prefix + '.')}",
                          f"allowed: {', '.join(accepted)}")


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


# -- values by their annotations ----------------------------------------------------------------------------------
#
# A dataclass's (or a class's, a function's) annotations are the schema of what a user may type for its fields:
# ``lengths: list[int] | None`` takes ``[1000, 2000]`` or ``null``, not ``[1000.7]`` or ``["400"]``. These helpers
# check a value against an annotation by type only; ranges stay with the class that owns the field (its
# ``__post_init__``, with the ``check_*`` helpers above).


def nearest(name: str, names: Collection[str], prefix: str = "") -> str:
    """`` (did you mean limit?)`` with the name of ``names`` closest to ``name`` (shown after ``prefix``:
    ``pruner.window``), or nothing when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(n) for n in names], n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def parameters(target: object) -> dict[str, object]:
    """What ``target`` takes, ``name -> annotation`` (``typing.Any`` where there is none): the init fields of a
    dataclass, else the parameters of a class's ``__init__`` or of a function (not ``self``, ``*args``, ``**kw``);
    a mapping is taken as that answer already."""
    import dataclasses
    import inspect
    import typing

    if isinstance(target, Mapping):
        return dict(target)
    if dataclasses.is_dataclass(target):
        hints = _hints(target)
        return {f.name: hints.get(f.name, typing.Any) for f in dataclasses.fields(target) if f.init}
    # A class's own __init__ (read from the class: mypy sees an instance of `type` and calls it unsound).
    function = cast("Callable[..., object]", target.__init__ if isinstance(target, type) else target)  # type: ignore[misc]
    hints = _hints(function)
    skipped = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {name: hints.get(name, typing.Any) for name, p in inspect.signature(function).parameters.items()
            if name != "self" and p.kind not in skipped}


def _hints(target: object) -> dict[str, object]:
    import typing

    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation that cannot be evaluated here: the field is not type-checked
        return {}


def check_fields(prefix: str, target: object, values: Mapping[str, object], what: str | None = None,
                 skip: Collection[str] = ()) -> None:
    """Raise :class:`ConfigError` for a key of ``values`` that ``target`` does not take (with the nearest name), or
    a value whose type its annotation does not admit. ``prefix``: the keys' path (``benchmark``); ``skip``: keys
    that are not ``target``'s (``_target_``)."""
    accepted = parameters(target)
    for key in values:
        if key not in skip and key not in accepted:
            raise ConfigError(f"{prefix}.{key} is not a parameter of {what or getattr(target, '__name__', target)}"
                              f"{nearest(key, accepted, prefix + '.')}", f"allowed: {', '.join(accepted)}")
    for key, value in values.items():
        if key in accepted:
            check_type(f"{prefix}.{key}", value, accepted[key])


def check_dataclass_fields(prefix: str, obj: DataclassInstance) -> None:
    """:func:`check_fields` on a dataclass instance's own init fields (its ``__post_init__`` calls it)."""
    import dataclasses

    check_fields(prefix, type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init})


def check_type(key: str, value: object, annotation: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` has a type that ``annotation`` admits (``int``, ``float``,
    ``bool``, ``str``, ``Literal``, ``list[...]``, ``dict[...]``, a dataclass as a mapping of its fields, ``X | None``,
    ``Any``); in a list or a mapping, the first item that does not is named (``benchmark.lengths[0]=1000.7``)."""
    found = _mismatch(key, value, annotation)
    if found is None:
        return
    key, value, annotation = found
    options = _options(annotation)
    optional = type(None) in options
    scalar = [o for o in options if o is not type(None)]
    if len(scalar) == 1:  # the house messages of the check_* helpers, where one applies
        import typing

        only = scalar[0]
        if only is int:
            check_int(key, value, optional=optional)
        elif only is float:
            check_real(key, value, optional=optional)
        elif only is bool and not optional:
            check_bool(key, value)
        elif typing.get_origin(only) is typing.Literal:
            check_choice(key, value, typing.get_args(only), optional=optional)
    allowed = f"allowed: {describe_type(annotation)}"
    if str in scalar and isinstance(value, (bool, int, float)):
        allowed += f" (quote it to type one: {key}='{value}')"
    raise ConfigError(f"{key}={_shown(value)} is {kind_of(value)}", allowed)


def _options(annotation: object) -> tuple[object, ...]:
    import types
    import typing

    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _is_sequence(origin: object) -> bool:
    import collections.abc

    return origin in (list, tuple, collections.abc.Sequence, collections.abc.Collection, set, frozenset)


def _is_mapping(origin: object) -> bool:
    import collections.abc

    return origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def matches(value: object, annotation: object) -> bool:
    import dataclasses
    import typing
    from collections.abc import Mapping

    if annotation is typing.Any or annotation is object or isinstance(annotation, typing.TypeVar):
        return True
    options = _options(annotation)
    if len(options) > 1:
        return any(matches(value, option) for option in options)
    if annotation is type(None) or annotation is None:
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return any(type(a) is type(value) and a == value for a in args)
    if annotation is int:
        return is_int(value)
    if annotation is float:
        return is_real(value) and value == value
    if annotation is bool or annotation is str:
        return isinstance(value, annotation)
    if _is_sequence(origin or annotation):
        item = args[0] if args else typing.Any
        return isinstance(value, (list, tuple)) and all(matches(v, item) for v in value)
    if _is_mapping(origin or annotation):
        key_type, value_type = args if len(args) == 2 else (typing.Any, typing.Any)
        return isinstance(value, Mapping) and all(matches(k, key_type) and matches(v, value_type)
                                                  for k, v in value.items())
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return True
        fields = parameters(annotation)
        return isinstance(value, Mapping) and all(k in fields and matches(v, fields[k]) for k, v in value.items())
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # a typing construct this check does not know: not checked


def _mismatch(key: str, value: object, annotation: object) -> tuple[str, object, object] | None:
    """``None`` when ``value`` matches; else the innermost ``(key, value, annotation)`` that does not, within the
    list or mapping shape that ``value`` has."""
    import dataclasses
    import typing
    from collections.abc import Mapping

    if matches(value, annotation):
        return None
    for option in _options(annotation):
        origin, args = typing.get_origin(option) or option, typing.get_args(option)
        if _is_sequence(origin) and isinstance(value, (list, tuple)):
            item = args[0] if args else typing.Any
            for index, element in enumerate(value):
                inner = _mismatch(f"{key}[{index}]", element, item)
                if inner is not None:
                    return inner
        elif dataclasses.is_dataclass(option) and isinstance(value, Mapping):
            check_fields(key, option, value)
            return None
        elif _is_mapping(origin) and isinstance(value, Mapping) and len(args) == 2:
            for name, element in value.items():
                inner = _mismatch(f"{key}.{name}", element, args[1])
                if inner is not None:
                    return inner
    return key, value, annotation


_PLURALS = {int: "whole numbers", float: "numbers", str: "strings", bool: "booleans (true or false)"}


def describe_type(annotation: object) -> str:
    import dataclasses
    import typing

    options = _options(annotation)
    if len(options) > 1:
        parts = [describe_type(o) for o in options if o is not type(None)]
        return " or ".join(parts + (["null"] if type(None) in options else []))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if _is_sequence(origin or annotation):
        item = args[0] if args else typing.Any
        return "a list" + (f" of {_PLURALS.get(item, describe_type(item) + ' items')}" if item is not typing.Any else "")
    if _is_mapping(origin or annotation):
        return "a mapping"
    if dataclasses.is_dataclass(annotation):
        return "a mapping of " + ", ".join(parameters(annotation))
    names: dict[object, str] = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def kind_of(value: object) -> str:
    from collections.abc import Mapping

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if is_int(value):
        return "a whole number"
    if isinstance(value, float):
        return "a float" if value == value else "not a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


SEED_MAX = 2**32 - 1  # what every generator a seed reaches takes (torch, numpy, random)


def check_seed(key: str, value: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a whole number from 0 to :data:`SEED_MAX`."""
    check_int(key, value, minimum=0, maximum=SEED_MAX)


NAME_LENGTH = 128  # characters in a name that becomes a folder (model.name, experiment_name, layer_config...)


def check_name(key: str, value: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` can name one folder inside the output root: a non-empty string
    without a path separator, ``..``, or a control character, at most :data:`NAME_LENGTH` characters."""
    import os

    if not isinstance(value, str):
        raise ConfigError(f"{key}={_shown(value)} is {kind_of(value)}, not a name", "allowed: a name (a string)")
    allowed = "allowed: a name without /, \\ or .. (letters, digits and - _ . @ + =), which names one folder"
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not value.strip():
        raise ConfigError(f"{key}={value!r} is empty", allowed)
    if any(s in value for s in separators):
        raise ConfigError(f"{key}={value!r} contains a path separator: the folder it names would not be one folder "
                          "inside output_root", allowed)
    if ".." in value:
        raise ConfigError(f"{key}={value!r} contains '..': the folder it names could leave output_root", allowed)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{key}={value!r} contains a control character", allowed)
    if len(value) > NAME_LENGTH:
        raise ConfigError(f"{key}: a name of {len(value)} characters is too long to name a folder",
                          f"allowed: at most {NAME_LENGTH} characters")


def check_writable_folder(key: str, value: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` names a folder that exists or can be created, and can be written
    (checked by creating it and a temporary file in it)."""
    import tempfile
    from pathlib import Path

    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={_shown(value)} is not a folder", "allowed: a folder to write into, e.g. outputs")
    path = Path(value).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}={value} cannot be written ({exc.strerror or type(exc).__name__})",
                          "allowed: a folder this user can create and write into") from None
