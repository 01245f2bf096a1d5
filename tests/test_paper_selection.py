"""``compat=paper`` selects exactly what the paper's code selects, ties included, and caches it in the same order.

Max pooling spreads one peak of SnapKV's votes over up to ``kernel_size`` bit-identical scores, so the cut-off
of a selection often falls inside a plateau; which members ``topk`` keeps depends on how it is called. The
paper's code calls ``topk(capacity - window)`` on the scores before the window and appends the window; its fp16
models score in float16. The inputs here are chosen so that the cut-off does fall in a tie (float32) or a
float16 near-tie: each test shows that another way of calling ``topk``, or float32 scores, would select otherwise,
so the exact equality with tests/paper_reference.py is not an accident of easy inputs."""

from __future__ import annotations

import pytest
import torch

from qpruning import KVCompressor
from qpruning.cache.budget import LayerPlan
from qpruning.cache.cache import QPrunedCache
from qpruning.cache.quantizers import KIVI
from qpruning.compat import paper_pruner
from qpruning.pruners import H2O, PyramidKV, SnapKV, StreamingLLM, select_tokens
from qpruning.pruners.paper import PaperH2O, PaperPyramidKV, PaperSnapKV, PaperStreamingLLM
from tests import paper_reference as ref

Q_HEADS, KV_HEADS, HEAD_DIM, WINDOW = 8, 2, 16, 8
SCALING = HEAD_DIM**-0.5


def inputs(seed: int, seq: int, dtype: torch.dtype, layers: int = 1):
    gen = torch.Generator().manual_seed(seed)
    queries = [(2 * torch.randn(1, Q_HEADS, seq, HEAD_DIM, generator=gen)).to(dtype) for _ in range(layers)]
    keys = [torch.randn(1, KV_HEADS, seq, HEAD_DIM, generator=gen).to(dtype) for _ in range(layers)]
    return queries, keys


def through_the_compressor(pruner, tokens: int, queries, keys) -> QPrunedCache:
    """Every layer compressed in paper mode (16 bits), from the given queries and keys."""
    layers, seq = len(keys), keys[0].shape[2]
    compressor = KVCompressor(pruner=pruner, quantizer=KIVI(bits=16), tokens=tokens, compat="paper")
    cache = QPrunedCache(layers, plans=[LayerPlan(bits=16, tokens=tokens)] * layers)
    for layer, key in enumerate(keys):
        cache.layers[layer].update(key, key)
    layer_tokens = compressor.layer_tokens(cache.plans, seq)
    for layer, (query, key) in enumerate(zip(queries, keys)):
        compressor.compress_layer(cache, layer, query, key, key, SCALING, layer_tokens)
    return cache


def cache_order(pruner, query, key, tokens: int) -> torch.Tensor:
    """The kept positions in the order the paper-mode layer stores them."""
    repeated = key.repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
    return pruner.choose(query, repeated, None, SCALING, tokens).order


def rows_kept_otherwise(pruner, query, key, tokens: int, expected: torch.Tensor) -> int:
    """Query-head rows where the window's scores set to +inf and ``topk(tokens)`` on the whole row (the methods'
    :func:`select_tokens`), on the very same scores, keeps other tokens than ``expected``."""
    repeated = key.repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
    scores = pruner.score(query, repeated, None, SCALING)
    keep = select_tokens(scores, torch.full((1, Q_HEADS), tokens), None, WINDOW)
    kept = keep.nonzero()[:, -1].view(1, Q_HEADS, tokens)
    return int((kept != expected).any(-1).sum())


def ties_at_the_cut(scores: torch.Tensor, kept: torch.Tensor) -> int:
    """Rows whose lowest selected earlier token scores exactly what an unselected earlier token scores."""
    n_before = scores.shape[-1]
    tied = 0
    for h in range(kept.shape[1]):
        chosen = [p for p in kept[0, h].tolist() if p < n_before]
        rest = sorted(set(range(n_before)) - set(chosen))
        tied += bool(scores[0, h, chosen].min() == scores[0, h, rest].max())
    return tied


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_snapkv_on_max_pooled_plateaus_keeps_and_orders_exactly_what_the_paper_code_does(seed):
    tokens, seq = 61, 200
    (query,), (key,) = inputs(seed, seq, torch.float32)
    pruner = paper_pruner(SnapKV(window=WINDOW))
    expected = ref.snapkv_keep(query, key, tokens, WINDOW, ordered=True)
    cache = through_the_compressor(SnapKV(window=WINDOW), tokens, [query], [key])
    assert torch.equal(cache.kept_positions(0), expected.sort(dim=-1).values)
    assert torch.equal(cache_order(pruner, query, key, tokens), expected)
    # the cut-off lies on plateaus of bit-identical pooled scores, where topk's call decides
    assert ties_at_the_cut(ref.snapkv_scores(query, key, WINDOW, 7, "max"), expected) > 0
    assert rows_kept_otherwise(pruner, query, key, tokens, expected.sort(dim=-1).values) > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_snapkv_of_a_float16_model_scores_in_float16_as_the_paper_code_does(seed):
    tokens, seq = 61, 200
    (query,), (key,) = inputs(seed, seq, torch.float16)
    expected = ref.snapkv_keep(query, key, tokens, WINDOW, ordered=True)
    cache = through_the_compressor(SnapKV(window=WINDOW), tokens, [query], [key])
    assert torch.equal(cache.kept_positions(0), expected.sort(dim=-1).values)
    assert torch.equal(cache_order(paper_pruner(SnapKV(window=WINDOW)), query, key, tokens), expected)
    # float32 scores of the same float16 tensors flip a near-tie at the cut-off
    in_float32 = ref.snapkv_keep(query.float(), key.float(), tokens, WINDOW)
    assert not torch.equal(in_float32, expected.sort(dim=-1).values)


@pytest.mark.parametrize(("seed", "dtype"), [(0, torch.float32), (1, torch.float32), (0, torch.float16)])
def test_pyramidkv_keeps_and_orders_every_layer_exactly_as_the_paper_code(seed, dtype):
    tokens, seq, layers = 40, 300, 3
    queries, keys = inputs(seed, seq, dtype, layers)
    cache = through_the_compressor(PyramidKV(window=WINDOW), tokens, queries, keys)
    pruner = paper_pruner(PyramidKV(window=WINDOW))
    layer_tokens = pruner.layer_tokens([tokens] * layers, seq)
    otherwise = 0
    for layer, (query, key) in enumerate(zip(queries, keys)):
        expected = ref.pyramidkv_keep(query, key, tokens, WINDOW, layer, layers, ordered=True)
        assert torch.equal(cache.kept_positions(layer), expected.sort(dim=-1).values), f"layer {layer}"
        assert torch.equal(cache_order(pruner, query, key, layer_tokens[layer]), expected), f"layer {layer}"
        otherwise += rows_kept_otherwise(pruner, query, key, layer_tokens[layer], expected.sort(dim=-1).values)
    assert otherwise > 0


@pytest.mark.parametrize(("seed", "dtype"), [(0, torch.float32), (2, torch.float16)])
def test_h2o_keeps_and_orders_exactly_as_the_paper_code(seed, dtype):
    tokens, seq = 61, 200
    (query,), (key,) = inputs(seed, seq, dtype)
    expected = ref.h2o_keep(query, key, tokens, WINDOW, ordered=True)
    cache = through_the_compressor(H2O(window=WINDOW), tokens, [query], [key])
    assert torch.equal(cache.kept_positions(0), expected.sort(dim=-1).values)
    assert torch.equal(cache_order(paper_pruner(H2O(window=WINDOW)), query, key, tokens), expected)


def test_a_prompt_of_exactly_the_capacity_is_cached_in_topk_order_as_the_paper_code_does():
    """The code keeps a prompt whole only when it is shorter than the capacity: at exactly the capacity every
    token is kept, the earlier ones in ``topk`` order."""
    tokens = seq = 64
    (query,), (key,) = inputs(0, seq, torch.float32)
    pruner = paper_pruner(SnapKV(window=WINDOW))
    expected = ref.snapkv_keep(query, key, tokens, WINDOW, ordered=True)
    order = cache_order(pruner, query, key, tokens)
    assert torch.equal(order, expected) and not torch.equal(order, expected.sort(dim=-1).values)
    assert not pruner.keeps_all(seq, seq) and SnapKV().keeps_all(seq, seq)


def test_paper_mode_chooses_the_paper_classes_once_with_the_same_parameters():
    chosen = [
        (StreamingLLM(window=0, sinks=4), PaperStreamingLLM),
        (H2O(window=8), PaperH2O),
        (SnapKV(window=16, kernel_size=5, pooling="avg"), PaperSnapKV),
        (PyramidKV(window=8, beta=10), PaperPyramidKV),
    ]
    for pruner, cls in chosen:
        compressor = KVCompressor(pruner=pruner, tokens=64, compat="paper")
        assert type(compressor.pruner) is cls and compressor.pruner.name == pruner.name
        assert compressor.pruner.describe() == pruner.describe()
        assert all(getattr(compressor.pruner, f) == getattr(pruner, f) for f in ("window", "queries_read"))
        assert paper_pruner(compressor.pruner) is compressor.pruner  # idempotent: dataclasses.replace keeps it
        assert type(KVCompressor(pruner=pruner, tokens=64).pruner) is type(pruner)  # methods: untouched
