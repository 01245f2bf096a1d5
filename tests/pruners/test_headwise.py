"""Ada-KV and HeadKV: head-wise budgets equal slow references, respect their floor / pool and the layer totals,
select per head, hold bytes by the formula, and reproduce the uncompressed model when nothing is pruned."""

import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from qpruning import KIVI, FlexGen, KVCompressor, SnapKV
from qpruning.head_scores import shipped_path
from qpruning.pruners import AdaKV, HeadKV, get_pruner, load_head_scores, select_tokens
from qpruning.pruners.headkv import SCORES_FORMAT, allocate_head_budgets
from qpruning.transformers_api import cache_kwargs

BATCH, Q_HEADS, KV_HEADS, SEQ, DIM = 2, 8, 4, 120, 16
SCALE = DIM**-0.5
REPO = Path(__file__).resolve().parents[2]


def random_scores(rng, window=8, batch=BATCH, heads=KV_HEADS, seq=SEQ):
    """Continuous random scores (no ties) shaped like a SnapKV scorer's: the window scored +inf."""
    scores = torch.rand(batch, heads, seq, generator=rng) ** 3  # skewed, so heads differ
    scores[..., seq - window :] = math.inf
    return scores


def largest_remainder(quotients: list[Fraction], total: int) -> list[int]:
    floors = [math.floor(q) for q in quotients]
    order = sorted(range(len(quotients)), key=lambda i: (-(quotients[i] - floors[i]), i))
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    return floors


def ada_reference(scores, budget, window, alpha, normalize=False):
    """Ada-KV's allocation written out with loops and exact fractions."""
    batch, heads, seq = scores.shape
    prefix, selected = seq - window, budget - window
    out = []
    for b in range(batch):
        rows = [[float(scores[b, h, j]) for j in range(prefix)] for h in range(heads)]
        if normalize:
            rows = [[x * sum(sorted(r, reverse=True)[:selected]) / sum(r) for x in r] for r in rows]
        flat = sorted(((x, h) for h, r in enumerate(rows) for x in r), reverse=True)[: heads * selected]
        chosen = [sum(1 for _, h in flat if h == k) for k in range(heads)]
        floor = math.floor(alpha * selected + 1e-9)
        adaptive = heads * (selected - floor)
        shares = largest_remainder([Fraction(c * adaptive, heads * selected) for c in chosen], adaptive)
        out.append([window + floor + s for s in shares])
    return out, chosen


def write_scores(path, layers, heads, seed=0, published=True, zero_heads=()):
    gen = torch.Generator().manual_seed(seed)
    data = {}
    for layer in range(layers):
        for head in range(heads):
            values = (torch.rand(3, generator=gen) ** 2).tolist()
            data[f"{layer}-{head}"] = [0.0, 0.0] if (layer, head) in zero_heads else values
    if published:
        path.write_text(json.dumps(data))  # one line, as the published files
    else:
        path.write_text(json.dumps({"format": SCORES_FORMAT, "model": "x", "scores": data}, indent=1))
    return data


# -- Ada-KV ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [12, 30, 61])
@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.5])
def test_adakv_allocation_equals_a_slow_reference(budget, alpha, rng):
    scores = random_scores(rng)
    pruner = AdaKV(floor_alpha=alpha)
    counts = pruner.allocate(scores, budget, None)
    expected, _ = ada_reference(scores, budget, 8, alpha)
    assert counts.tolist() == expected
    assert counts.sum(-1).tolist() == [KV_HEADS * budget] * BATCH  # the layer holds exactly its budget
    assert int(counts.min()) >= 8 + math.floor(alpha * (budget - 8) + 1e-9)  # the safeguard floor
    assert len(set(counts[0].tolist())) > 1  # heads get different budgets


def test_adakv_stays_within_a_token_of_the_reference_codes_rounding(rng):
    # FFY0/AdaKV: capacity_h = round(c_h * (1 - alpha) + floor(alpha * B)); ours sums to the budget exactly.
    scores = random_scores(rng)
    budget, alpha = 58, 0.2  # B = 50, alpha * B = 10 is whole, so only the rounding differs
    _, chosen = ada_reference(scores[:1], budget, 8, alpha)
    theirs = [round(c * (1 - alpha) + 10) for c in chosen]
    ours = (AdaKV(floor_alpha=alpha).allocate(scores[:1], budget, None)[0] - 8).tolist()
    assert all(abs(a - b) <= 1 for a, b in zip(ours, theirs)) and sum(ours) == KV_HEADS * 50


def test_adakv_normalize_option_equals_the_reference(rng):
    scores = random_scores(rng)
    counts = AdaKV(normalize=True).allocate(scores, 30, None)
    assert counts.tolist() == ada_reference(scores, 30, 8, 0.2, normalize=True)[0]


def test_adakv_with_alpha_one_is_snapkvs_uniform_allocation(rng):
    scores = random_scores(rng)
    assert AdaKV(floor_alpha=1.0).allocate(scores, 30, None).eq(30).all()


def test_adakv_keeps_per_head_the_top_of_its_own_scores_and_the_window(rng):
    query = torch.randn(BATCH, Q_HEADS, SEQ, DIM, generator=rng)
    key = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    pruner = AdaKV(pooling="avg")  # average pooling: no ties between neighbours
    scores = pruner.score(query, key, None, SCALE)
    torch.testing.assert_close(scores, SnapKV(window=8, pooling="avg").score(query, key, None, SCALE))
    counts = pruner.allocate(scores, 24, None)
    keep = select_tokens(scores, counts, None, pruner.window)
    for b in range(BATCH):
        for h in range(KV_HEADS):
            row = keep[b, h]
            assert row[-8:].all() and int(row.sum()) == int(counts[b, h])
            s = scores[b, h, :-8]
            expected = set(s.topk(int(counts[b, h]) - 8).indices.tolist())
            assert set(row[:-8].nonzero().squeeze(-1).tolist()) == expected


def test_adakv_padded_rows_allocate_as_if_alone_and_short_rows_keep_everything(rng):
    scores = random_scores(rng, batch=3)
    valid = torch.ones(3, SEQ, dtype=torch.bool)
    valid[1, :20] = False  # 100 real tokens
    valid[2, : SEQ - 25] = False  # 25 real tokens: fewer than the budget
    scores[1, :, :20] = 0.0
    counts = AdaKV().allocate(scores, 30, valid)
    alone = AdaKV().allocate(scores[1:2, :, 20:], 30, None)
    assert counts[1].tolist() == alone[0].tolist()
    assert counts[2].tolist() == [25] * KV_HEADS
    keep = select_tokens(scores, counts, valid, 8)
    assert not keep[1, :, :20].any() and torch.equal(keep[2], valid[2].expand(KV_HEADS, SEQ))


def test_adakv_parameters_are_validated():
    with pytest.raises(ValueError, match=r"floor_alpha must be in \[0, 1\]"):
        AdaKV(floor_alpha=1.5)


# -- HeadKV ------------------------------------------------------------------------------------------------------


def test_published_and_own_score_files_load_to_the_same_matrix(tmp_path):
    data = write_scores(tmp_path / "published.json", 3, 4, seed=1)
    write_scores(tmp_path / "ours.json", 3, 4, seed=1, published=False)
    a, b = load_head_scores(tmp_path / "published.json"), load_head_scores(tmp_path / "ours.json")
    assert torch.equal(a.matrix, b.matrix) and a.matrix.shape == (3, 4)
    assert a.matrix[2, 1].item() == pytest.approx(sum(data["2-1"]) / 3)
    assert b.meta["model"] == "x"


def test_bad_score_files_are_rejected_with_the_reason(tmp_path):
    (tmp_path / "missing.json").write_text(json.dumps({"0-0": [1.0], "0-1": [1.0], "1-0": [1.0]}))
    with pytest.raises(ValueError, match="missing"):
        load_head_scores(tmp_path / "missing.json")
    (tmp_path / "key.json").write_text(json.dumps({"layer0": [1.0]}))
    with pytest.raises(ValueError, match="layer-head"):
        load_head_scores(tmp_path / "key.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HeadKV(head_scores=str(tmp_path / "nowhere.json"))


def headkv_reference(matrix, kv_heads, budgets, window, beta, temperature=1.0):
    """HeadKV's Eq. 4 for KV heads, with exact fractions and loops: S normalized, powered, normalized, summed over
    each query-head group (query head q -> KV head q // group), pool (b // beta) * L * H_kv, largest remainder."""
    layers, heads = len(matrix), len(matrix[0])
    group = heads // kv_heads
    total = sum(sum(row) for row in matrix)
    powered = [[(x / total) ** temperature for x in row] for row in matrix]
    norm = sum(sum(row) for row in powered)
    s = [[sum(powered[layer][q] for q in range(h * group, (h + 1) * group)) / norm for h in range(kv_heads)]
         for layer in range(layers)]
    selected = [b - window for b in budgets]
    pool = sum(b // beta for b in selected) * kv_heads
    exact = [Fraction(selected[layer] - selected[layer] // beta) + Fraction(s[layer][h]) * Fraction(pool)
             for layer in range(layers) for h in range(kv_heads)]
    rounded = largest_remainder(exact, sum(selected) * kv_heads)
    return [[window + rounded[layer * kv_heads + h] for h in range(kv_heads)] for layer in range(layers)], exact


@pytest.mark.parametrize("beta", [1.005, 1.01, 1.5, 5.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_headkv_budgets_equal_the_papers_formula(beta, temperature, tmp_path, rng):
    layers = 5
    write_scores(tmp_path / "s.json", layers, Q_HEADS, seed=2)
    pruner = HeadKV(head_scores=str(tmp_path / "s.json"), beta=beta, temperature=temperature)
    matrix = load_head_scores(tmp_path / "s.json").matrix.tolist()
    budget, seq = 40, 400
    pruner.layer_tokens([budget] * layers, seq)
    scores = random_scores(rng, seq=seq)
    counts = torch.stack([pruner.allocate(scores, budget, None, layer)[0] for layer in range(layers)])
    expected, exact = headkv_reference(matrix, KV_HEADS, [budget] * layers, 8, beta, temperature)
    assert counts.tolist() == expected
    assert int(counts.sum()) == layers * KV_HEADS * budget  # the model-wide mean is the budget exactly
    # every head keeps at least its basic budget b - b // beta (and the window)
    assert int(counts.min()) >= 8 + (budget - 8) - math.floor((budget - 8) / beta)
    # the reference code rounds head by head: within one token of ours
    assert all(abs(c - 8 - round(float(e))) <= 1 for c, e in zip(counts.flatten().tolist(), exact))
    assert len(set(counts.flatten().tolist())) > 1


def test_headkv_with_layerwise_budgets_pools_each_layers_own_share(tmp_path, rng):
    layers, budgets, seq = 5, [30, 40, 50, 60, 70], 500
    write_scores(tmp_path / "s.json", layers, Q_HEADS, seed=4)
    pruner = HeadKV(head_scores=str(tmp_path / "s.json"), beta=1.2)
    assert pruner.layer_tokens(budgets, seq) == budgets  # the plan decides which layers are compressed
    counts = [pruner.allocate(random_scores(rng, seq=seq), b, None, layer)[0].tolist() for layer, b in enumerate(budgets)]
    matrix = load_head_scores(tmp_path / "s.json").matrix.tolist()
    assert counts == headkv_reference(matrix, KV_HEADS, budgets, 8, 1.2)[0]
    assert sum(map(sum, counts)) == KV_HEADS * sum(budgets)


def test_headkv_gives_a_kv_head_the_pool_share_of_its_query_heads(tmp_path, rng):
    layers, group = 2, Q_HEADS // KV_HEADS
    # Only query heads 0..group-1 (KV head 0) of layer 1 matter.
    zero = {(layer, q) for layer in range(layers) for q in range(Q_HEADS) if not (layer == 1 and q < group)}
    write_scores(tmp_path / "s.json", layers, Q_HEADS, zero_heads=zero)
    pruner = HeadKV(head_scores=str(tmp_path / "s.json"), beta=2.0)
    pruner.layer_tokens([28, 28], 500)
    counts = torch.stack([pruner.allocate(random_scores(rng, seq=500), 28, None, layer)[0] for layer in range(2)])
    basic = 8 + 20 - 10  # window + b - b // beta
    pool = 10 * layers * KV_HEADS
    assert counts[0].tolist() == [basic] * KV_HEADS
    assert counts[1].tolist() == [basic + pool] + [basic] * (KV_HEADS - 1)


def test_headkv_on_a_short_prompt_redistributes_what_a_head_cannot_use(tmp_path, rng):
    layers, seq, budget = 3, 60, 40
    zero = {(layer, q) for layer in range(layers) for q in range(Q_HEADS) if (layer, q) != (0, 0)}
    write_scores(tmp_path / "s.json", layers, Q_HEADS, zero_heads=zero)  # one head would take the whole pool
    for redistribute in (True, False):
        pruner = HeadKV(head_scores=str(tmp_path / "s.json"), redistribute=redistribute)
        pruner.layer_tokens([budget] * layers, seq)
        counts = torch.stack(
            [pruner.allocate(random_scores(rng, seq=seq), budget, None, layer)[0] for layer in range(layers)]
        )
        assert int(counts[0, 0]) == seq and int(counts.max()) <= seq  # the head keeps the whole prompt
        if redistribute:
            assert int(counts.sum()) == layers * KV_HEADS * budget
        else:
            assert int(counts.sum()) < layers * KV_HEADS * budget  # the reference code loses the excess


def test_headkv_water_filling_keeps_the_total_and_the_cap():
    importance = torch.tensor([[0.7, 0.1], [0.1, 0.1]], dtype=torch.float64)
    counts = allocate_head_budgets(importance, [30, 30], beta=1.01, cap=50)
    assert int(counts.sum()) == 120 and int(counts.max()) == 50 and int(counts[0, 0]) == 50


def test_headkv_finds_the_shipped_scores_by_model_name_or_says_where_it_looked():
    if shipped_path("smollm2_135m").is_file():
        pruner = HeadKV(model_name="smollm2_135m")
        assert pruner.importance.num_layers == 30 and pruner.importance.num_heads == 9
    with pytest.raises(FileNotFoundError, match=r"looked for .*llama3_8b_instruct\.json.*compute_head_scores"):
        HeadKV(model_name="llama3_8b_instruct")


def test_headkv_scores_of_another_model_fail_before_any_weights_load(tmp_path, tiny_models):
    write_scores(tmp_path / "s.json", 32, 32)
    model, _ = tiny_models("llama")
    compressor = KVCompressor(pruner=HeadKV(head_scores=str(tmp_path / "s.json")), quantizer=FlexGen(bits=4), tokens=64)
    with pytest.raises(ValueError, match="32 layers x 32 heads, but the model has 4 layers x 4 query heads"):
        compressor.plan(model.config)


def test_unknown_and_known_names_include_the_headwise_pruners():
    with pytest.raises(ValueError, match="adakv, headkv"):
        get_pruner("oracle")
    assert get_pruner("adakv", floor_alpha=0.3).floor_alpha == 0.3


# -- through a model -------------------------------------------------------------------------------------------


def headwise_pruners(tmp_path, model):
    path = tmp_path / "tiny_scores.json"
    write_scores(path, model.config.num_hidden_layers, model.config.num_attention_heads, seed=5)
    return {"adakv": AdaKV(), "headkv": HeadKV(head_scores=str(path))}


@pytest.mark.parametrize("name", ["adakv", "headkv"])
def test_bits16_with_budget_above_length_reproduces_uncompressed_logits_and_tokens(name, tiny_models, tmp_path):
    model, _ = tiny_models("llama")
    pruner = headwise_pruners(tmp_path, model)[name]
    ids = torch.randint(100, 40000, (1, 90), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_logits=True, pad_token_id=2)
    with torch.no_grad():
        plain = model.generate(ids, **kwargs)
        compressor = KVCompressor(pruner=pruner, quantizer=FlexGen(bits=16), tokens=256)
        with compressor.attach(model):
            ours = model.generate(ids, **cache_kwargs(model, compressor.new_cache(model)), **kwargs)
    assert torch.equal(ours.sequences, plain.sequences)
    for a, b in zip(ours.logits, plain.logits):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["adakv", "headkv"])
@pytest.mark.parametrize("quantizer", [FlexGen(bits=4), FlexGen(bits=16), KIVI(bits=4, group_size=32)],
                         ids=lambda q: f"{q.name}{q.bits}")
def test_bytes_held_equal_the_formula_to_the_byte(name, quantizer, tiny_models, tmp_path):
    model, _ = tiny_models("llama")
    pruner = headwise_pruners(tmp_path, model)[name]
    ids = torch.randint(100, 40000, (1, 400), generator=torch.Generator().manual_seed(4))
    compressor = KVCompressor(pruner=pruner, quantizer=quantizer, tokens=100)
    with compressor.attach(model), torch.no_grad():
        cache = compressor.new_cache(model)
        model(ids, **cache_kwargs(model, cache))
    d = model.config.head_dim
    for layer in cache.layers:
        rows = layer.kept_per_row.tolist()
        b, g = quantizer.bits, quantizer.group_size
        quantized = [quantizer.quantizable(n) for n in rows]
        tails = [n - q for n, q in zip(rows, quantized)] if quantizer.enabled else rows
        segments = int(sum(quantized) > 0) + int(sum(tails) > 0)
        expected = {
            "packed": sum(2 * q * d * b // 8 for q in quantized) if quantizer.enabled else 0,
            "scales": sum(2 * q * d // g * 2 for q in quantized) if quantizer.enabled else 0,
            "zeros": sum(2 * q * d // g * 2 for q in quantized) if quantizer.enabled else 0,
            "full": sum(2 * t * d * 2 for t in tails),
            "index": 4 * len(rows) * (1 + segments),
        }
        held = {k: v for k, v in layer.nbytes().items() if v}
        assert held == {k: v for k, v in expected.items() if v}
    assert cache.kept_tokens() == pytest.approx(100.0)


@pytest.mark.parametrize("name", ["adakv", "headkv"])
def test_bytes_fall_in_proportion_to_the_budget_and_equal_snapkvs_at_the_same_budget(name, tiny_models, tmp_path):
    model, _ = tiny_models("llama")
    ids = torch.randint(100, 40000, (1, 600), generator=torch.Generator().manual_seed(5))
    held = {}
    for pruner_name in (name, "snapkv"):
        for tokens in (40, 80, 160):
            pruner = headwise_pruners(tmp_path, model)[name] if pruner_name == name else SnapKV(window=8)
            compressor = KVCompressor(pruner=pruner, quantizer=FlexGen(bits=4), tokens=tokens)
            with compressor.attach(model), torch.no_grad():
                cache = compressor.new_cache(model)
                model(ids, **cache_kwargs(model, cache))
            bytes_ = cache.nbytes()
            held[pruner_name, tokens] = (bytes_["total"], bytes_["total"] - bytes_["index"])
    for tokens in (40, 80, 160):
        assert held[name, tokens] == held["snapkv", tokens]  # FlexGen: the same tokens cost the same bytes
    data = [held[name, t][1] for t in (40, 80, 160)]
    assert data[1] == 2 * data[0] and data[2] == 4 * data[0]  # proportional to the budget, scales and zeros too


# -- configs and the head-score script ---------------------------------------------------------------------------


def test_headwise_configs_compose_and_instantiate_through_hydra(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from qpruning.app import register_resolvers, runner_from_config

    register_resolvers()
    path = tmp_path / "tiny.json"
    write_scores(path, 4, 4)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        ada = compose("config", overrides=["model=tiny_llama", "pruner=adakv", "quant=flexgen", "bits=4"])
        head = compose("config", overrides=["model=tiny_llama", "pruner=headkv", f"pruner.head_scores={path}"])
        missing = compose("config", overrides=["model=tiny_llama", "pruner=headkv"])
    assert isinstance(instantiate(ada.pruner, _convert_="all"), AdaKV)
    pruner = instantiate(head.pruner, _convert_="all")
    assert isinstance(pruner, HeadKV) and pruner.model_name == "tiny_llama" and pruner.window == 8
    runner_from_config(head, tmp_path / "run").validate()
    with pytest.raises(Exception, match=r"looked for .*tiny_llama\.json"):  # Hydra wraps the FileNotFoundError
        instantiate(missing.pruner, _convert_="all")


def test_the_head_score_script_writes_a_file_headkv_reads(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import compute_head_scores
    finally:
        sys.path.pop(0)
    out = tmp_path / "tiny_llama.json"
    compute_head_scores.main(
        ["--model", "tiny_llama", "--probe", "retrieval", "--lengths", "300", "--depths", "50",
         "--teacher-forcing", "--out", str(out)]
    )
    data = json.loads(out.read_text())
    assert data["format"] == SCORES_FORMAT and data["num_layers"] == 4 and data["num_heads"] == 4
    assert data["probes_used"] == 1 and len(data["scores"]) == 16
    probe = data["probes"][0]
    assert probe["span"][1] - probe["span"][0] >= 10  # the needle was found in the prompt
    assert any(v[0] > 0 for v in data["scores"].values())  # some head looked at the needle
    pruner = HeadKV(head_scores=str(out))
    pruner.validate_geometry(4, 4, 2)
