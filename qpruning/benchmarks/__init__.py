"""Benchmarks: Needle-in-a-Haystack, RULER, LongBench, LongBench-E, and the Figure 1 cross-entropy.

``get_benchmark(name, **config)`` builds one from its config name (``benchmark=`` in Hydra); the names are the
keys of :data:`BENCHMARKS`. Names ending in ``_small`` are quick variants: the same classes with small presets
that the given config overrides. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Benchmark, BenchmarkConfigError, DataNotFoundError, Sample, SampleError, truncate_middle
from .crossentropy import CrossEntropy, continuation_cross_entropy
from .longbench import LongBench, LongBenchE
from .niah import NeedleInAHaystack
from .ruler import Ruler

BENCHMARKS: dict[str, tuple[type[Benchmark], dict[str, Any]]] = {
    "niah": (NeedleInAHaystack, {}),
    "ruler": (Ruler, {}),
    "longbench": (LongBench, {}),
    "longbench_e": (LongBenchE, {}),
    "crossentropy": (CrossEntropy, {}),
    # Quick variants: minutes on a CPU with SmolLM2-135M.
    "niah_small": (NeedleInAHaystack, {"lengths": [1000, 2000, 3500], "depths": [0, 50, 100]}),
    "ruler_8k": (Ruler, {"length": 8192}),
    "ruler_16k": (Ruler, {"length": 16384}),
    "ruler_small": (
        Ruler,
        # The tasks SmolLM2-135M solves uncompressed at 4k (100 / 100 / ~60 / ~60): others stay at 0 whatever
        # the cache, so they would tell nothing about compression.
        {"length": 4096, "num_samples": 2,
         "tasks": ["niah_single_2", "niah_single_3", "niah_multivalue", "niah_multiquery"]},
    ),
    "longbench_small": (LongBench, {"limit": 5}),
    "longbench_e_small": (LongBenchE, {"limit": 5}),
    "crossentropy_small": (CrossEntropy, {"length": 1024, "continuation_tokens": 64, "num_samples": 4}),
}
"""Config name -> (benchmark class, preset fields)."""

IGNORED_KEYS = frozenset({"_target_"})


def benchmark_fields(name: str) -> dict[str, Any]:
    """The config fields of benchmark ``name`` with their defaults (presets applied): what a
    ``conf/benchmark/<name>.yaml`` holds."""
    cls, preset = _lookup(name)
    values = {}
    for f in _init_fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    values.update(preset)
    return values


def _init_fields(cls: type[Benchmark]) -> list[dataclasses.Field[Any]]:
    """The fields of a registered benchmark class (each one is a dataclass) that its constructor takes."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    return [f for f in dataclasses.fields(cls) if f.init]


def _lookup(name: str) -> tuple[type[Benchmark], dict[str, Any]]:
    if name not in BENCHMARKS:
        raise BenchmarkConfigError(f"benchmark {name!r} does not exist", f"valid: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def get_benchmark(name: str, **config: Any) -> Benchmark:
    """The benchmark called ``name`` with its config fields (a ``_target_`` key is ignored).

    Hydra configs call it as ``_target_: qpruning.benchmarks.get_benchmark`` with ``name`` and the fields.

    Raises:
        BenchmarkConfigError: unknown benchmark, unknown field, or a value the benchmark rejects; the message
            lists what is valid.
    """
    cls, preset = _lookup(name)
    config = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    valid = [f.name for f in _init_fields(cls)]
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise BenchmarkConfigError(
            f"unknown field(s) {', '.join(unknown)} for benchmark {name!r}", f"valid: {', '.join(valid)}"
        )
    # Plain Python values: the Hydra application turns its containers into lists and dicts where it builds the
    # objects (qpruning.app.build: instantiate with _convert_="all").
    return cls(**{**preset, **config})


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkConfigError",
    "CrossEntropy",
    "DataNotFoundError",
    "LongBench",
    "LongBenchE",
    "NeedleInAHaystack",
    "Ruler",
    "Sample",
    "SampleError",
    "benchmark_fields",
    "continuation_cross_entropy",
    "get_benchmark",
    "truncate_middle",
]
