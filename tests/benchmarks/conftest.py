"""Fixtures of the benchmark tests: SmolLM2's tokenizer, the fixture folders, an isolated data cache.

Tests marked ``slow`` (real SmolLM2 generation) run with the rest (``make test``, CI); ``make test-fast``
leaves them out (``-m "not slow"``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's real tokenizer (49k BPE, ChatML chat template)."""
    from qpruning.models import load_smollm2_tokenizer

    return load_smollm2_tokenizer()


@pytest.fixture(scope="session")
def longbench_dir() -> Path:
    return FIXTURES / "longbench"


@pytest.fixture(scope="session")
def ruler_qa_dir() -> Path:
    return FIXTURES / "ruler_qa"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Point the qpruning cache's data folder at an empty temporary folder, so that data a developer downloaded
    does not change what the tests see (the converted SmolLM2 stays where it is: it is read before this runs or
    through models.cache_dir, which these tests do not redirect)."""
    from qpruning.benchmarks import common

    data_root = tmp_path / "qpruning-data"
    monkeypatch.setattr(common, "data_cache_dir", lambda name: data_root / name)
    for module in ("qpruning.benchmarks.longbench.data", "qpruning.benchmarks.ruler.qa"):
        mod = __import__(module, fromlist=["data_cache_dir"])
        monkeypatch.setattr(mod, "data_cache_dir", lambda name: data_root / name)
    return data_root
