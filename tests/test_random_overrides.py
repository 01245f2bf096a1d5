"""Property: any command line drawn from the schema either runs or is refused in one line, before the model, and
writes nothing outside the output root.

Overrides are drawn from :mod:`qpruning.schema` itself: the top-level keys of ``conf/config.yaml``
(:class:`~qpruning.schema.RunConfig`) and the fields of the classes the default groups build (``ModelSpec``,
``SnapKV``, ``KIVI``, ``NeedleInAHaystack``), with values of the admitted types and ranges and of others (floats
for whole numbers, strings for numbers, paths for names, out-of-range numbers), as ``key=``, ``+key=`` (a new key,
often a typo of a real one), ``++key=``, ``~key`` and group choices (``pruner=...``, real or not).

- :func:`test_a_random_command_line_runs_or_is_refused_in_one_line`: many examples through the real entry
  (:func:`qpruning.cli.main`: the preflight, Hydra's main, the task) in this process, with a tripwire where the job
  would load the tokenizer and then the model: exit 2 with one ``qpruning: error:`` line and no traceback, or the
  tripwire reached with no error; in both cases no file outside the output root (which sits deep inside the
  example's folder, the working directory, so that a ``..`` that escaped would land where the test looks).
- :func:`test_a_random_valid_command_line_completes_a_run`: a few examples from the valid part of the schema run
  to the end on ``tiny_llama``: exit 0 and a complete run folder (``metrics.json``) inside the output root.

Deterministic (``derandomize``: the same examples on every machine), no example database, no deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import sys
import tempfile
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from qpruning.errors import PREFIX, parameters
from qpruning.schema import RunConfig

BASE = ["model=tiny_llama"]
DEEP = Path("a/b/c/d/e/f/g/h")  # the output root's folder inside the example's: 8 levels for a '..' to climb
CHOICES = {group: sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / group).glob("*.yaml"))
           for group in ("pruner", "quant", "benchmark", "logger", "compat")}
NAMES = ["a", "x_1", "16bit@8-15", "niah", "..", "../x", "../../y", "a/b", "a\\b", "", " ", "a..b", "."]
WRONG = st.one_of(st.integers(-10, 10), st.sampled_from([10**20, 2**32, -(2**40)]), st.floats(-1e3, 1e3),
                  st.sampled_from([math.nan, math.inf]), st.booleans(), st.none(), st.sampled_from(NAMES),
                  st.lists(st.integers(-5, 5000), max_size=2))


def top_level_keys() -> dict[str, object]:
    """The top-level keys a user may type (not ``output_root``: the example's measure), with their annotations."""
    return {k: v for k, v in parameters(RunConfig).items() if k != "output_root"}


def group_keys() -> dict[str, object]:
    """``group.field -> annotation`` for the groups of ``python run.py model=tiny_llama``."""
    from qpruning.benchmarks import NeedleInAHaystack
    from qpruning.cache import KIVI
    from qpruning.models import ModelSpec
    from qpruning.pruners import SnapKV

    keys = {}
    for group, cls in (("model", ModelSpec), ("pruner", SnapKV), ("quant", KIVI), ("benchmark", NeedleInAHaystack)):
        keys.update({f"{group}.{name}": annotation for name, annotation in parameters(cls).items()})
    return keys


KEYS = {**top_level_keys(), **group_keys()}


def valid(annotation) -> st.SearchStrategy:
    """Values of the type ``annotation`` admits (of any range)."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, type(int | None)) else ()
    if options:
        return st.one_of(*[valid(o) for o in options])
    if annotation is type(None):
        return st.none()
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(annotation))
    if origin is list or annotation is list:
        items = typing.get_args(annotation)
        return st.lists(valid(items[0]) if items else WRONG, max_size=3)
    if origin is dict or annotation is dict:
        return st.just({})
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.one_of(st.integers(-2, 9000), st.sampled_from([0, 1, 32, 600, 2**32, 10**20]))
    if annotation is float:
        return st.one_of(st.floats(0, 1), st.floats(-2, 5000), st.sampled_from([0.0625, math.nan, math.inf]))
    if annotation is str:
        return st.one_of(st.sampled_from(NAMES), st.text("abcxyz_-.@ 019", max_size=8))
    return WRONG


def value_for(annotation) -> st.SearchStrategy:
    return st.one_of(valid(annotation), valid(annotation), valid(annotation), WRONG)  # mostly an admitted type


def render(value) -> str:
    """``value`` as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render(v) for v in value) + "]"
    return "{" + ",".join(f"{k}:{render(v)}" for k, v in value.items()) + "}"


def typo(name: str) -> st.SearchStrategy:
    """A misspelling of ``name``: a letter dropped, doubled or swapped with the next."""
    head, _, last = name.rpartition(".")
    prefix = f"{head}." if head else ""

    def spell(args):
        i, kind = args
        i = i % max(len(last), 1)
        if kind == 0:
            word = last[:i] + last[i + 1:]
        elif kind == 1:
            word = last[:i] + last[i] + last[i:]
        else:
            word = last[:i] + last[i + 1:i + 2] + last[i:i + 1] + last[i + 2:]
        return prefix + (word or "x")

    return st.tuples(st.integers(0, 30), st.integers(0, 2)).map(spell)


@st.composite
def override(draw) -> str:
    key = draw(st.sampled_from(sorted(KEYS)))
    form = draw(st.sampled_from(["set", "set", "set", "add", "add_typo", "force", "delete", "group"]))
    if form == "group":
        group = draw(st.sampled_from(sorted(CHOICES)))
        return f"{group}={draw(st.one_of(st.sampled_from(CHOICES[group]), st.sampled_from(['oracle', '../x'])))}"
    if form == "delete":
        return f"~{key}"
    value = render(draw(value_for(KEYS[key])))
    if form == "add_typo":
        return f"+{draw(typo(key))}={value}"
    return {"set": "", "add": "+", "force": "++"}[form] + f"{key}={value}"


class Reached(BaseException):
    """The tripwire: the job got as far as loading the tokenizer or the model (nothing on the way catches it)."""


@contextlib.contextmanager
def tripwire(enabled: bool = True):
    from qpruning.models import ModelSpec

    def trip(self, *args, **kwargs):
        raise Reached(self.name)

    saved = ModelSpec.load, ModelSpec.load_tokenizer, ModelSpec.load_model
    if enabled:
        ModelSpec.load = ModelSpec.load_tokenizer = ModelSpec.load_model = trip
    try:
        yield
    finally:
        ModelSpec.load, ModelSpec.load_tokenizer, ModelSpec.load_model = saved


@dataclasses.dataclass
class Result:
    code: int | None
    stderr: str
    reached: bool
    outside: list[str]
    metrics: Path | None


def run(overrides: list[str], *, trip: bool = True) -> Result:
    """``python run.py model=tiny_llama OVERRIDES`` in this process, in a fresh folder (the working directory)."""
    from qpruning.cli import main

    with tempfile.TemporaryDirectory(prefix="random_overrides_") as tmp:
        folder = Path(tmp).resolve()
        root = folder / DEEP / "outputs"
        err, out = io.StringIO(), io.StringIO()
        code, reached, saved_argv, cwd = 0, False, list(sys.argv), os.getcwd()
        os.chdir(folder)
        try:
            with tripwire(trip), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                main(["run", *BASE, *overrides, f"output_root={root}"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Reached:
            code, reached = None, True
        finally:
            os.chdir(cwd)
            sys.argv = saved_argv
        outside = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                         if p.is_file() and root not in p.parents)
        metrics = sorted(root.rglob("metrics.json"))
        return Result(code, err.getvalue(), reached, outside, metrics[0] if metrics else None)


@pytest.fixture(autouse=True)
def _plain_errors(monkeypatch):
    monkeypatch.setenv("QPRUNING_DEBUG", "0")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setenv("TRITON_INTERPRET", "0")


# No shrinking: an example costs up to a second or two, and the one drawn is reported as it is.
PHASES = (Phase.explicit, Phase.generate)


@settings(max_examples=120, derandomize=True, database=None, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(override(), min_size=1, max_size=3))
def test_a_random_command_line_runs_or_is_refused_in_one_line(overrides):
    result = run(overrides)
    event("reached the model" if result.reached else "refused in one line" if result.code == 2 else "other")
    lines = [line for line in result.stderr.splitlines() if line.startswith(PREFIX)]
    assert "Traceback" not in result.stderr, (overrides, result.stderr[-3000:])
    assert not result.outside, (overrides, result.outside)
    if result.reached:
        assert lines == [], (overrides, result.stderr[-2000:])
    else:
        assert result.code == 2, (overrides, result.code, result.stderr[-2000:])
        assert len(lines) == 1 and result.stderr.rstrip().splitlines()[-1] == lines[0], (overrides, result.stderr)


VALID = st.fixed_dictionaries({
    "pruner": st.sampled_from(["snapkv", "streamingllm", "h2o", "pyramidkv", "none"]),
    "quant": st.sampled_from(["kivi", "flexgen"]),
    "bits": st.sampled_from([2, 4, 8, 16]),
    "group_size": st.sampled_from([32, 64, 128]),
    "tokens": st.integers(64, 500),
    "benchmark.max_new_tokens": st.integers(1, 3),
    "model.name": st.sampled_from(["tiny_llama", "my-model@1", "my.model"]),
})


@settings(max_examples=3, derandomize=True, database=None, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow])
@given(VALID)
def test_a_random_valid_command_line_completes_a_run(choice):
    overrides = [f"{k}={v}" for k, v in choice.items()] + ["benchmark.lengths=[600]", "benchmark.depths=[50]", "limit=1"]
    result = run(overrides, trip=False)
    assert result.code == 0 and "Traceback" not in result.stderr, (overrides, result.stderr[-3000:])
    assert result.metrics is not None, (overrides, "no metrics.json")
    assert not result.outside, (overrides, result.outside)
