"""``Pruner.queries_read``: a shared prefill (qpruning.prefill) keeps only the last queries a pruner says it reads,
so a pruner's scores must not change whatever stands in the queries before them."""

import pytest
import torch

from qpruning.compat import paper_pruner
from qpruning.pruners import H2O, AdaKV, PyramidKV, SnapKV, StreamingLLM
from qpruning.pruners.base import NoPruner
from qpruning.pruners.headkv import HeadKV
from tests.default_pruners import DEFAULT_PRUNERS

BATCH, Q_HEADS, KV_HEADS, SEQ, DIM = 2, 6, 2, 90, 16
SCALE = DIM**-0.5

# every registered pruner with its defaults (qpruning.pruners.PRUNERS), and variants whose scores read otherwise
PRUNERS = [*DEFAULT_PRUNERS, SnapKV(window=8), StreamingLLM(sinks=4)]


def scorers(pruner):
    """(name, function, key heads) for every scorer the compressor can call: ``score`` on KV heads and on keys
    repeated to the query heads, and compat=paper's pruner's ``score`` (:func:`qpruning.compat.paper_pruner`) on
    keys repeated to the query heads."""
    paper = paper_pruner(pruner)
    assert paper.queries_read == pruner.queries_read
    return [("score", pruner.score, KV_HEADS), ("score, repeated heads", pruner.score, Q_HEADS),
            ("paper score", paper.score, Q_HEADS)]


@pytest.mark.parametrize("pruner", PRUNERS, ids=lambda p: p.describe())
@pytest.mark.parametrize("seed", [0, 1])
def test_scores_do_not_depend_on_the_queries_before_those_read(pruner, seed):
    rng = torch.Generator().manual_seed(seed)
    query = torch.randn(BATCH, Q_HEADS, SEQ, DIM, generator=rng)
    noisy = query.clone()
    read = pruner.queries_read
    if read is None:  # H2O: every query counts; show that replacing any earlier one would change its scores
        noisy[:, :, : SEQ // 2] = torch.randn(BATCH, Q_HEADS, SEQ // 2, DIM, generator=rng) * 3
    else:
        assert 0 <= read < SEQ
        noisy[:, :, : SEQ - read] = torch.randn(BATCH, Q_HEADS, SEQ - read, DIM, generator=rng) * 3
    for name, score, heads in scorers(pruner):
        key = torch.randn(BATCH, heads, SEQ, DIM, generator=rng)
        valid = torch.ones(BATCH, SEQ, dtype=torch.bool)
        valid[1, :7] = False  # one left-padded row
        for key_valid in (None, valid):
            expected = score(query, key, key_valid, SCALE)
            found = score(noisy, key, key_valid, SCALE)
            if read is None:
                assert not torch.equal(found, expected), name
            else:
                assert torch.equal(found, expected), name


def test_pruners_built_on_snapkv_read_its_window_and_score_as_it_does():
    for cls in (PyramidKV, AdaKV, HeadKV):
        assert cls.score is SnapKV.score and cls.queries_read is SnapKV.queries_read
    assert PyramidKV(window=5).queries_read == 5 and SnapKV().queries_read == 32
    assert StreamingLLM().queries_read == 0 and NoPruner().queries_read == 0 and H2O().queries_read is None


def test_a_kept_tail_rebuilds_the_query_at_full_length():
    from qpruning.prefill import LayerCapture, queries_needed

    query, key = torch.randn(1, 6, 50, 8), torch.randn(1, 2, 50, 8)
    for queries, kept in ((None, 50), (0, 0), (8, 8), (80, 50)):
        capture = LayerCapture.keep(query, key, key, 0.5, queries)
        assert capture.query_tail.shape[2] == kept
        full = capture.query()
        assert full.shape == query.shape
        assert torch.equal(full[:, :, 50 - kept:], query[:, :, 50 - kept:])
        assert not full[:, :, : 50 - kept].any()
        if kept < 50:
            assert capture.query_tail.data_ptr() != query.data_ptr()  # a copy: the full query can be freed

    class Compressor:
        def __init__(self, pruner):
            self.pruner = pruner

    assert queries_needed([Compressor(SnapKV()), Compressor(PyramidKV()), Compressor(StreamingLLM())]) == 32
    assert queries_needed([Compressor(SnapKV()), Compressor(H2O())]) is None
    assert queries_needed([Compressor(NoPruner())]) == 0
