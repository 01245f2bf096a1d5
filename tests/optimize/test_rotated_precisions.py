"""``qpruning optimize`` with rotated precisions (``bits_choices=[4,8,16,2r,4r]``): the search may store a layer
group rotated, counts the rotation's sign bytes, records ``rotate`` in allocation.yaml, and runs apply it."""

import hashlib
import json
from dataclasses import asdict

import pytest

from qpruning import HQQ, KIVI, KVCompressor, SnapKV
from qpruning.errors import ConfigError
from qpruning.models import tiny_config
from qpruning.optimize.allocation import Allocation, Geometry, GroupSetting, Precision, layer_groups
from qpruning.optimize.search import EvaluationCache, SearchSpace, greedy_search

GEOMETRY = Geometry(num_layers=8, kv_heads=2, head_dim=128)
CHOICES = (4, 8, 16, "2r", "4r")


def space(**kwargs):
    options = dict(geometry=GEOMETRY, quantizer=KIVI(bits=4), groups=layer_groups(8, 4), budget=1 / 32,
                   full_tokens=8192, max_tokens=4000, min_tokens=32, bits_choices=CHOICES)
    options.update(kwargs)
    return SearchSpace(**options)


def test_precisions_parse_numbers_and_rotated_labels_and_refuse_the_rest():
    assert Precision.parse(4) == Precision(4, None) and Precision.parse("2r") == Precision(2, True)
    assert Precision.parse("8r").label == "8r" and Precision.parse(16).label == "16"
    for bad in ("16r", "3r", 4.0, "4", "r", True):
        with pytest.raises(ConfigError, match="is not a precision"):
            Precision.parse(bad)


def test_rotated_uniform_points_and_moves_fit_the_budget_with_their_sign_bytes():
    s = space()
    states = s.uniform_states()
    assert list(states) == ["1x16", "2x8", "4x4", "4x4r", "8x2r"]
    rotated_4 = s.allocation(states["4x4r"])
    assert all(g.rotate for g in rotated_4.groups)
    plain_4 = s.allocation(states["4x4"])
    # the same tokens cost head_dim sign bytes more per rotated layer
    same_tokens = Allocation([GroupSetting(g.first, g.last, g.bits, g.tokens, True) for g in plain_4.groups])
    assert same_tokens.nbytes(GEOMETRY, s.quantizer) == plain_4.nbytes(GEOMETRY, s.quantizer) + 8 * 128
    candidates = [*states.values(), *s.moves(states["4x4"])]
    assert any(s.allocation(c).groups[0].rotate for c in candidates[len(states):])
    for state in candidates:
        allocation = s.allocation(state)
        assert allocation.nbytes(GEOMETRY, s.quantizer) <= s.budget_bytes
        assert all(g.tokens >= 32 for g in allocation.groups)


def test_the_search_chooses_rotation_where_it_pays_and_allocation_yaml_records_it(tmp_path):
    def objective(allocation: Allocation):
        # made up: the middle groups want tokens, and rotated low-bit groups lose little
        value = 0.0
        for g in allocation.groups:
            weight = 2.0 if 2 <= g.first <= 5 else 1.0
            value += weight / (1 + g.tokens / 100) + (0.0 if g.rotate or g.bits >= 8 else 0.4)
        return value, None, [value]

    result = greedy_search(space(), objective, EvaluationCache(tmp_path / "e.jsonl"), max_evaluations=40, seed=0)
    assert any(g.rotate for g in result.best.groups)
    result.best.to_yaml(tmp_path / "allocation.yaml")
    back = Allocation.from_yaml(tmp_path / "allocation.yaml")
    assert back.groups == result.best.groups
    overrides = back.overrides()
    assert [o.rotate for o in overrides] == [g.rotate for g in result.best.groups]
    plans = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1 / 32, budget_mode="exact",
                         full_cache_tokens=8192, layers=overrides, every_layer=True).plan(_tiny_geometry(8))
    assert [p.rotate for p in plans] == [bool(g.rotate) for g in result.best.groups for _ in range(g.size)]


def _tiny_geometry(layers: int):
    config = tiny_config("llama")
    config.num_hidden_layers = layers
    return config


def test_allocations_without_rotate_load_and_key_as_before(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("name: old\nbudget: 0.03\nlayers:\n- {layers: 0-3, bits: 4, tokens: 900}\n"
                    "- {layers: 4-7, bits: 16, tokens: 200}\n")
    old = Allocation.from_yaml(path)
    assert [g.rotate for g in old.groups] == [None, None]
    assert [o.rotate for o in old.overrides()] == [None, None]
    before = [{k: v for k, v in asdict(g).items() if k != "rotate"} for g in old.groups]
    assert old.key() == hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    old.to_yaml(tmp_path / "again.yaml")
    assert "rotate" not in (tmp_path / "again.yaml").read_text()


def test_a_rotated_choice_with_hqq_is_refused_before_any_weights():
    with pytest.raises(ConfigError, match="hqq does not take rotate"):
        HQQ(bits=4).with_rotate(True)
