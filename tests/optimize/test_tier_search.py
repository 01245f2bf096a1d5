"""``qpruning optimize search=tiers``: a greedy search over the shares of precision per token (``quant.tiers``),
under the budget a uniform point spends, resumable, and its ``tiers.yaml`` a run's command line."""

import json
import shlex

import pytest
import torch
from bad_inputs import CASES, run_in_process
from test_bad_inputs import assert_one_line
from test_search import stopped_and_resumed

from qpruning import KIVI, KVCompressor, SnapKV
from qpruning.cache.tiers import parse_tiers
from qpruning.errors import ConfigError
from qpruning.models import tiny_config
from qpruning.optimize.allocation import Allocation, Geometry, GroupSetting
from qpruning.optimize.driver import optimize
from qpruning.optimize.search import EvaluationCache, greedy_search
from qpruning.optimize.subsets import BenchmarkSubset
from qpruning.optimize.tiers import Tiering, TierSpace

GEOMETRY = Geometry(num_layers=8, kv_heads=2, head_dim=128)
BUDGET = 1 / 32


def space(**kwargs):
    options = dict(geometry=GEOMETRY, quantizer=KIVI(bits=4), budget=BUDGET, full_tokens=8192, min_tokens=32)
    options.update(kwargs)
    return TierSpace(**options)


def reachable(s: TierSpace, depth: int):
    """Every state within ``depth`` moves of the uniform states."""
    seen = set(s.uniform_states().values())
    frontier = set(seen)
    for _ in range(depth):
        frontier = {m for state in frontier for m in s.moves(state)} - seen
        seen |= frontier
    return seen


def toy_objective(calls):
    """Made up: the best mix is 0.2 at 8 bits, 0.5 at 4, 0.3 at 2 (a bowl over the shares)."""

    def objective(tiering: Tiering):
        calls.append(tiering.key())
        shares = dict(zip(tiering.bits, tiering.shares))
        value = (shares[8] - 0.2) ** 2 + (shares[2] - 0.3) ** 2 + 0.01
        return value, None, [value]

    return objective


@pytest.mark.parametrize("step", [0.1, 0.25, 0.05])
def test_states_stay_on_the_grid_and_sum_to_one(step):
    s = space(tier_step=step)
    states = reachable(s, 4)
    assert len(states) > 10
    for state in states:
        assert sum(state) == s.steps == round(1 / step) and min(state) >= 0
        tiering = s.allocation(state)
        assert sum(tiering.shares) == pytest.approx(1, abs=1e-9) and min(tiering.shares) >= 0
        assert all(abs(share / step - round(share / step)) < 1e-9 for share in tiering.shares)
        # the quant.tiers value a run takes: zero shares left out, shares that sum to 1
        assert parse_tiers(tiering.tiers(), (2, 4, 8, 16)) == tiering.plan()
        assert all(share > 0 for share, _ in tiering.tiers())


def test_moves_shift_one_step_of_share_from_one_tier_to_another():
    s = space()
    assert sorted(s.moves((2, 5, 3))) == sorted([(1, 6, 3), (1, 5, 4), (3, 4, 3), (2, 4, 4), (3, 5, 2), (2, 6, 2)])
    assert sorted(s.moves((10, 0, 0))) == [(9, 0, 1), (9, 1, 0)]  # nothing moves out of an empty tier
    assert s.uniform_states() == {"2x8": (10, 0, 0), "4x4": (0, 10, 0), "8x2": (0, 0, 10)}


def test_a_tiering_spends_the_budget_of_a_uniform_point_as_a_run_budgets_it():
    s = space()
    config = tiny_config("llama", num_hidden_layers=8)
    for state in reachable(s, 3):
        tiering = s.allocation(state)
        assert tiering.tokens >= 32 and s.nbytes(tiering) <= s.budget_bytes
        # the run of quant.tiers=... budget=... budget_mode=exact keeps exactly the tokens the search counted
        compressor = tiering.compressor(KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=BUDGET,
                                                     full_cache_tokens=8192))
        assert compressor.budget_mode == "exact" and compressor.quantizer.tier_plan == tiering.plan()
        assert {p.tokens for p in compressor.plan(config)} == {tiering.tokens}
    # one tier at 4 bits is the uniform 4x4 point: the same tokens as bits=4 in exact accounting
    uniform = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=BUDGET, budget_mode="exact",
                           full_cache_tokens=8192)
    assert s.allocation((0, 10, 0)).tokens == uniform.plan(config)[0].tokens
    # more share at fewer bits buys more tokens
    assert s.allocation((0, 0, 10)).tokens > s.allocation((0, 5, 5)).tokens > s.allocation((0, 10, 0)).tokens


def test_states_whose_tokens_miss_the_pruners_window_do_not_fit():
    # 1/384 of 8k: 21 tokens at 16 bits, fewer than the window of 32; 67 at 4 bits
    s = space(budget=1 / 384, tier_bits=(16, 4))
    assert list(s.uniform_states()) == ["4x4"]
    assert not s.fits((s.steps, 0))
    for state in reachable(s, 10):
        assert s.allocation(state).tokens >= 32
    assert (s.steps, 0) not in reachable(s, 10)


def test_the_search_improves_or_keeps_the_objective_and_finds_the_toy_optimum(tmp_path):
    calls = []
    result = greedy_search(space(), toy_objective(calls), EvaluationCache(tmp_path / "e.jsonl"), max_evaluations=60,
                           seed=0)
    best_uniform = min(e.objective for e in result.uniform.values())
    assert result.best_evaluation.objective < best_uniform
    assert result.best.shares == (0.2, 0.5, 0.3) and result.best.name == "optimized"
    # the best so far never gets worse, and no tiering is evaluated twice (a state met again comes from the cache)
    assert result.best_evaluation.objective == min(e.objective for e in result.history)
    assert len(calls) == len(set(calls)) == len({e.key for e in result.history})
    # a flat objective keeps the best uniform point
    flat = greedy_search(space(), lambda t: (1.0, None, [1.0]), EvaluationCache(tmp_path / "flat.jsonl"),
                         max_evaluations=20, seed=0)
    assert flat.best_evaluation.objective == 1.0 and len(flat.best.tiers()) == 1


def test_a_stopped_search_resumes_from_its_cache_without_evaluating_again(tmp_path):
    whole, whole_calls, first_calls, resumed, resumed_calls = stopped_and_resumed(
        space, toy_objective, tmp_path, stop=7, total=40)
    path = tmp_path / "stopped.jsonl"
    assert first_calls and resumed_calls
    assert not set(resumed_calls) & set(first_calls)  # nothing evaluated twice
    assert len(first_calls) + len(resumed_calls) == len(whole_calls)
    assert resumed.best.key() == whole.best.key()
    again = []
    greedy_search(space(), toy_objective(again), EvaluationCache(path), max_evaluations=40, seed=1)
    assert again == []  # everything is in the cache
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(r["key"].startswith("tiers-") and sum(t["share"] for t in r["allocation"]) == pytest.approx(1)
               for r in records)


def test_tier_keys_are_never_layer_allocation_keys():
    s = space()
    keys = {s.allocation(state).key() for state in reachable(s, 3)}
    assert all(key.startswith("tiers-") for key in keys)
    allocation = Allocation([GroupSetting(0, 7, 4, 900)])
    assert not allocation.key().startswith("tiers-")
    # another budget buys other tokens: another key, even for the same shares
    assert space(budget=1 / 16).allocation((0, 10, 0)).key() != s.allocation((0, 10, 0)).key()


def test_bad_tier_settings_are_refused_in_one_line():
    for kwargs, mentions in [({"tier_bits": (8, 8)}, "tier_bits"), ({"tier_bits": (8, 3)}, "tier_bits"),
                             ({"tier_bits": (8,)}, "tier_bits"), ({"tier_step": 0.3}, "tier_step"),
                             ({"tier_step": 0}, "tier_step"), ({"tier_step": 0.001}, "tier_step")]:
        with pytest.raises(ConfigError, match=mentions):
            space(**kwargs)


TIER_CASES = [c for c in CASES if c.app == "optimize" and ("tier" in c.id or "search" in c.id)]


def test_the_table_of_bad_inputs_has_the_tier_search_cases():
    ids = {c.id for c in TIER_CASES}
    assert {"opt-search-unknown", "opt-tier-bits-repeat", "opt-tier-bits-3", "opt-tier-step-grid",
            "opt-search-tiers-pruner-none"} <= ids


@pytest.mark.parametrize("case", TIER_CASES, ids=[c.id for c in TIER_CASES])
def test_a_bad_tier_search_input_is_one_line_before_the_model(case, tmp_path, monkeypatch):
    monkeypatch.setenv("QPRUNING_DEBUG", "0")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    assert_one_line(run_in_process(case, tmp_path), case)


@pytest.fixture(scope="module")
def tier_search(tiny_models, tmp_path_factory):
    """A real tier search on the tiny llama (NIAH calibration, 4 evaluations), its folder and its base."""
    model, tokenizer = tiny_models("llama")
    output = tmp_path_factory.mktemp("tiers")
    base = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1 / 64, budget_mode="exact",
                        full_cache_tokens=8192)
    calibration = [BenchmarkSubset("niah", {"lengths": [600], "depths": [50]})]
    torch.manual_seed(0)
    result = optimize(model, tokenizer, "tiny_llama", tiny_config("llama"), base, calibration, output, 8192,
                      search="tiers", max_evaluations=4, run_overrides=("pruner.window=32",))
    return result, output, base, (model, tokenizer, calibration)


def test_a_tier_search_writes_tiers_yaml_and_search_json(tier_search):
    result, output, base, _ = tier_search
    summary = json.loads((output / "search.json").read_text())
    assert summary["search"] == "tiers" and summary["evaluations"] == 4 == len(summary["history"])
    assert summary["best"]["tiers"] == result.best.tiers()
    assert set(summary["uniform"]) == {"2x8", "4x4", "8x2"}  # tier_bits' default: [8, 4, 2]
    assert not (output / "allocation.yaml").exists() and (output / "search.png").is_file()
    import yaml

    data = yaml.safe_load((output / "tiers.yaml").read_text())
    assert data["tiers"] == result.best.tiers() and data["budget"] == base.budget
    assert data["tokens"] == result.best.tokens and data["bytes"] <= data["budget_bytes"]
    for record in summary["history"]:
        assert record["key"].startswith("tiers-")
        # never above the data as counted (below it where a prompt is shorter than the tokens bought), but for the
        # rows' small index (their lengths), on top as in every budget= run
        assert record["measured_bytes"] <= record["nbytes"] + 64 * 2 * 4


def test_a_rerun_of_the_tier_search_evaluates_nothing_again(tier_search, monkeypatch):
    from qpruning.optimize import driver

    result, output, base, (model, tokenizer, calibration) = tier_search
    lines = (output / "evaluations.jsonl").read_text()

    def evaluate(*args):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(driver, "answer_cross_entropy", evaluate)
    again = optimize(model, tokenizer, "tiny_llama", tiny_config("llama"), base, calibration, output, 8192,
                     search="tiers", max_evaluations=4, run_overrides=("pruner.window=32",))
    assert again.best.key() == result.best.key()
    assert (output / "evaluations.jsonl").read_text() == lines


def test_the_command_line_in_tiers_yaml_runs_the_same_tiers(tier_search, tmp_path):
    from test_config import compose_config

    from qpruning.app import runner_from_config

    result, output, base, _ = tier_search
    header = [line for line in (output / "tiers.yaml").read_text().splitlines() if line.startswith("#")]
    assert header[0].startswith("# Found by `qpruning optimize search=tiers` for tiny_llama")
    prefix = "# Use it in any run: "
    (command,) = [line[len(prefix):] for line in header if line.startswith(prefix)]
    args = shlex.split(command)
    assert args[:2] == ["python", "run.py"] and "pruner.window=32" in args
    runner = runner_from_config(compose_config(args[2:]), tmp_path)
    compressor = runner.compressor
    assert compressor.quantizer.tier_plan == result.best.plan()
    assert [list(t) for t in compressor.quantizer.tier_plan] == result.best.tiers()
    assert (compressor.budget, compressor.budget_mode, compressor.full_cache_tokens) == (base.budget, "exact", 8192)
    assert compressor == result.best.compressor(base)  # the run is the compressor the search evaluated
    assert {p.tokens for p in compressor.plan(tiny_config("llama"))} == {result.best.tokens}


def test_the_new_keys_leave_the_layer_searchs_folders_as_they_were():
    from test_run_identity import optimize_folder

    from qpruning.app import resolved_config
    from qpruning.identity import run_hash

    base = optimize_folder()
    assert optimize_folder("tier_step=0.2") == optimize_folder("tier_bits=[8,2]") == base  # read for nothing
    tiers = optimize_folder("search=tiers")
    assert tiers != base and optimize_folder("search=tiers", "tier_step=0.2") != tiers
    assert optimize_folder("search=tiers", "tier_bits=[4,2]") != tiers
    # the hash of the default configuration is the one it had before search, tier_bits and tier_step existed
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from test_config import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        config = resolved_config(compose("optimize"))
    before = {k: v for k, v in config.items() if k not in ("search", "tier_bits", "tier_step")}
    assert base.endswith(run_hash(before)) and run_hash(config) == run_hash(before)
