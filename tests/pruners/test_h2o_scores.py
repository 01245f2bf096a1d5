"""H2O's chunked, fused score equals the plain definition: the full L x L causal softmax in float64, summed
over the real queries and averaged over the query heads of each KV head."""

import pytest
import torch

from qpruning.pruners import H2O

BATCH, Q_HEADS, KV_HEADS, SEQ, DIM = 3, 6, 2, 37, 16
SCALE = DIM**-0.5


def reference(query, key, key_valid):
    """The definition, with nothing chunked, fused or shared: ``[batch, kv_heads, seq]`` in float64."""
    batch, q_heads, seq, _ = query.shape
    group = q_heads // key.shape[1]
    logits = query.double() @ key.double().repeat_interleave(group, dim=1).transpose(-1, -2) * SCALE
    allowed = torch.ones(seq, seq, dtype=torch.bool).tril().expand(batch, 1, seq, seq)
    if key_valid is not None:
        allowed = allowed & key_valid.view(batch, 1, 1, seq)
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    if key_valid is not None:
        probs = probs * key_valid.view(batch, 1, seq, 1)  # padded queries give nothing
    return probs.sum(dim=2).view(batch, -1, group, seq).mean(dim=2)


def padding(kind):
    """``None`` (nothing padded) or a ``[BATCH, SEQ]`` mask of real tokens."""
    if kind == "none":
        return None
    valid = torch.ones(BATCH, SEQ, dtype=torch.bool)
    valid[0, :5] = False  # left padding
    valid[1, -4:] = False  # right padding
    valid[2, :SEQ - 1] = False  # one real token, at the end
    return valid


@pytest.mark.parametrize("chunk", [1, 5, 8, SEQ])
@pytest.mark.parametrize("kind", ["none", "padded"])
def test_h2o_score_equals_the_full_causal_softmax_in_float64(chunk, kind, rng, monkeypatch):
    # A chunk of ``chunk`` queries; 5 does not divide the prompt, so the last chunk is shorter.
    monkeypatch.setattr("qpruning.pruners.base.SCORE_BLOCK_NUMBERS", BATCH * Q_HEADS * SEQ * chunk)
    query = 3 * torch.randn(BATCH, Q_HEADS, SEQ, DIM, generator=rng)  # large logits: peaked rows
    key = torch.randn(BATCH, KV_HEADS, SEQ, DIM, generator=rng)
    key_valid = padding(kind)

    scores = H2O(window=4).score(query, key, key_valid, SCALE)

    assert scores.dtype == torch.float32 and scores.shape == (BATCH, KV_HEADS, SEQ)
    expected = reference(query, key, key_valid)
    torch.testing.assert_close(scores, expected.float(), rtol=1e-5, atol=1e-6)
    if key_valid is not None:
        assert (scores[~key_valid.unsqueeze(1).expand_as(scores)] == 0).all()
        # Each real query hands out exactly one unit of attention.
        torch.testing.assert_close(scores.sum(-1), key_valid.sum(-1, keepdim=True).float().expand(-1, KV_HEADS))


def test_h2o_score_accepts_half_precision_inputs(rng):
    query = torch.randn(1, Q_HEADS, SEQ, DIM, generator=rng)
    key = torch.randn(1, KV_HEADS, SEQ, DIM, generator=rng)

    scores = H2O().score(query.half(), key.half(), None, SCALE)

    assert scores.dtype == torch.float32
    expected = reference(query.half().float(), key.half().float(), None)
    torch.testing.assert_close(scores, expected.float(), rtol=1e-5, atol=1e-6)
