"""Fixtures of the report's tests: a fabricated sweep (written once per session) and the paper's numbers."""

from __future__ import annotations

import pytest
from fabricate_runs import fabricate_sweep, throughput_csv

from qpruning.report import collect_runs, load_paper


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """A compact sweep over two "machines", with a partial run and a configuration run twice."""
    root = tmp_path_factory.mktemp("sweep")
    return fabricate_sweep(root)


@pytest.fixture(scope="session")
def collection(sweep):
    return collect_runs([sweep["root"]])


@pytest.fixture(scope="session")
def runs(collection):
    return collection.runs


@pytest.fixture(scope="session")
def paper():
    return load_paper()


@pytest.fixture(scope="session")
def throughput_file(tmp_path_factory):
    return throughput_csv(tmp_path_factory.mktemp("throughput") / "h100.csv")
