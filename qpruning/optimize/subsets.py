"""A benchmark subset: the calibration and held-out samples of ``qpruning optimize``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qpruning.benchmarks import Benchmark, get_benchmark


@dataclass
class BenchmarkSubset:
    """A benchmark config name and its field overrides (``get_benchmark(name, **fields)``)."""

    name: str
    fields: dict[str, Any]

    def build(self) -> Benchmark:
        return get_benchmark(self.name, **self.fields)
