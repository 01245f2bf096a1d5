"""docs/adding-a-pruner.md's worked example, run as written: its file, its registry entry and its conf file make a
pruner that builds, runs through a model, and passes the registry-parametrized checks."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from qpruning.pruners import PRUNERS, get_pruner
from qpruning.transformers_api import cache_kwargs

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-pruner.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture
def keynorm(monkeypatch):
    """The doc's pruner file as the module ``qpruning.pruners.keynorm``, entered in the registry (what the doc's
    registry line does), for the duration of a test."""
    module = types.ModuleType("qpruning.pruners.keynorm")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # before the class: dataclasses look its module up
    exec(compile(blocks("python")[0], "qpruning/pruners/keynorm.py", "exec"), module.__dict__)
    monkeypatch.setitem(PRUNERS, module.KeyNorm.name, module.KeyNorm)
    return module.KeyNorm


def test_the_docs_registry_entry_is_the_registry_with_one_more_class():
    entry = blocks("python")[1]
    listed = re.search(r"for cls in \(([^)]*)\)", entry).group(1).replace("\n", " ").split(",")
    assert [name.strip() for name in listed if name.strip()] == [*(cls.__name__ for cls in PRUNERS.values()), "KeyNorm"]


def test_the_docs_conf_file_builds_what_the_code_builds(keynorm):
    from qpruning.app import build

    node = OmegaConf.create({"pruner": OmegaConf.create(blocks("yaml")[0])})
    assert build(node, "pruner") == get_pruner("keynorm") == keynorm()


def test_the_docs_pruner_prunes_a_model_keeping_its_window_and_the_smallest_keys(keynorm, tiny_models):
    model, _ = tiny_models("llama")
    scope: dict = {}
    exec(blocks("python")[2], scope)  # the doc's plain-Python use
    compressor = scope["compressor"]
    assert type(compressor.pruner) is keynorm
    ids = torch.randint(100, 40000, (1, 150), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), compressor.attach(model):
        cache = compressor.new_cache(model)
        out = model.generate(ids, max_new_tokens=4, do_sample=False, **cache_kwargs(model, cache))
    assert out.shape[1] == 154 and cache.prefill_result().kept_tokens == 64
    with torch.no_grad():
        plain = model(ids, use_cache=True).past_key_values
    for layer in range(model.config.num_hidden_layers):
        kept = cache.kept_positions(layer)[0]  # [kv_heads, 64], ascending
        norms = plain.layers[layer].keys[0].float().norm(dim=-1)  # [kv_heads, 150]
        for head, positions in enumerate(kept.tolist()):
            assert positions[-8:] == list(range(142, 150))  # the window
            chosen, rest = set(positions[:-8]), set(range(142)) - set(positions)
            assert max(norms[head, sorted(chosen)]) <= min(norms[head, sorted(rest)])


def test_the_docs_pruner_passes_the_registry_parametrized_checks(keynorm):
    from tests.default_pruners import default_pruner
    from tests.pruners.test_queries_read import test_scores_do_not_depend_on_the_queries_before_those_read
    from tests.test_compat import test_paper_mode_refuses_the_pruners_absent_from_the_paper_code

    assert default_pruner("keynorm") == keynorm()
    test_scores_do_not_depend_on_the_queries_before_those_read(keynorm(), seed=0)
    test_paper_mode_refuses_the_pruners_absent_from_the_paper_code("keynorm")
