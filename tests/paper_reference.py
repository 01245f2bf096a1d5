"""Slow reference implementations of what the paper's published code computes (issue 14, ``compat=paper``).

The paper (QPruningKV, GitHub ``zhzihao/QPruningKV``, a PyramidKV / KVCache-Factory fork) selects tokens in
``pyramidkv/pyramidkv_utils.py`` (the ``*KVCluster.update_kv`` methods) and quantizes the kept tokens through
transformers' quantized cache with the HQQ backend. This module re-states that behaviour as plain torch functions
on given tensors, written for clarity rather than speed, so that qpruning's ``compat=paper`` mode can be tested
against it. Nothing here is copied from that code; docs/fidelity.md and the issue-14 spec describe the sources.

What the paper's code does, in the terms used below:

* grouped-query attention: the KV heads are repeated to the query heads *before* selection, so every query head
  chooses its own tokens and the cache then holds ``q_heads`` rows per layer. Every function here therefore takes
  ``key`` with ``kv_heads`` heads, repeats it, and returns positions per *query* head.
* a prompt shorter than the budget ``C`` (``max_capacity_prompt``) is kept whole; otherwise the last ``window``
  tokens are kept and ``C - window`` more are chosen among the earlier ones (PyramidKV: a per-layer count).
* scores are computed in the inputs' dtype, the softmax in float32 and cast back to the inputs' dtype (as the
  code does with fp16 models); feed float32 tensors to get float32 throughout.

Returned positions are ``LongTensor [batch, q_heads, kept]``, sorted, in original prompt positions (or, with
``ordered=True``, in the order the code's cache holds them: ``topk``'s order, then the window).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "agree_ties_aside",
    "expand_kv_heads",
    "h2o_allowed",
    "h2o_keep",
    "h2o_scores",
    "hqq_cache_kv_roundtrip",
    "hqq_cache_roundtrip",
    "hqq_group_members",
    "hqq_minmax_roundtrip",
    "hqq_outlier_roundtrip",
    "pool_votes",
    "pyramidkv_keep",
    "pyramidkv_layer_tokens",
    "snapkv_keep",
    "snapkv_scores",
    "streamingllm_keep",
]


# --------------------------------------------------------------------------------------------------- selection
def expand_kv_heads(key: torch.Tensor, q_heads: int) -> torch.Tensor:
    """``[batch, kv_heads, seq, d]`` -> ``[batch, q_heads, seq, d]``: query head ``h`` reads KV head
    ``h // (q_heads // kv_heads)`` (consecutive query heads share a KV head, as in Llama / Mistral)."""
    kv_heads = key.shape[1]
    if q_heads % kv_heads:
        raise ValueError(f"q_heads={q_heads} is not a multiple of kv_heads={kv_heads}")
    group = q_heads // kv_heads
    rows = [key[:, h // group] for h in range(q_heads)]
    return torch.stack(rows, dim=1)


def _all_positions(batch: int, heads: int, seq: int, device) -> torch.Tensor:
    return torch.arange(seq, device=device).expand(batch, heads, seq).clone()


def _check_budget(budget: int, window: int) -> None:
    # The paper's clusters assert max_capacity_prompt - window_size > 0.
    if budget - window <= 0:
        raise ValueError(f"budget={budget} must exceed window={window} (the paper's code asserts it)")


def _softmax_like_paper(logits: torch.Tensor) -> torch.Tensor:
    """Softmax in float32, then back to the logits' dtype (what the code does to its fp16 attention)."""
    return torch.softmax(logits.float(), dim=-1).to(logits.dtype)


def _window_logits(query: torch.Tensor, key: torch.Tensor, window: int) -> torch.Tensor:
    """Logits ``[batch, q_heads, window, seq]`` of the last ``window`` queries, causal inside the window block.

    A masked entry gets the dtype's most negative number added (not -inf), as the code does; it makes no
    difference to the softmax because every row keeps at least its own token.
    """
    seq, d = key.shape[-2], key.shape[-1]
    keys = expand_kv_heads(key, query.shape[1])
    logits = torch.matmul(query[..., seq - window :, :], keys.transpose(-1, -2)) / math.sqrt(d)
    block = torch.zeros(window, window, dtype=logits.dtype, device=logits.device)
    for i in range(window):
        for j in range(window):
            if j > i:
                block[i, j] = torch.finfo(logits.dtype).min
    logits[..., seq - window :] = logits[..., seq - window :] + block
    return logits


def pool_votes(votes: torch.Tensor, kernel_size: int, pooling: str) -> torch.Tensor:
    """Stride-1 pooling over the last axis with ``kernel_size // 2`` padding on both sides.

    ``max``: the largest vote among the neighbours that exist. ``avg``: their sum divided by ``kernel_size``
    (padding counts as zeros, torch's ``count_include_pad=True`` default). Written as an explicit loop.
    """
    if pooling not in ("max", "avg"):
        raise ValueError(f"pooling={pooling!r}: allowed max or avg")
    n = votes.shape[-1]
    half = kernel_size // 2
    out = torch.empty_like(votes)
    for p in range(n):
        lo, hi = max(0, p - half), min(n, p + half + 1)
        neighbours = votes[..., lo:hi]
        if pooling == "max":
            out[..., p] = neighbours.max(dim=-1).values
        else:
            out[..., p] = neighbours.sum(dim=-1) / kernel_size
    return out


def snapkv_scores(
    query: torch.Tensor, key: torch.Tensor, window: int, kernel_size: int, pooling: str
) -> torch.Tensor:
    """Pooled votes ``[batch, q_heads, seq - window]`` of the observation window for the earlier tokens."""
    seq = key.shape[-2]
    probs = _softmax_like_paper(_window_logits(query, key, window))
    votes = probs[..., : seq - window].sum(dim=-2)
    return pool_votes(votes, kernel_size, pooling)


def _top_plus_window(scores: torch.Tensor, n_select: int, seq: int, window: int, ordered: bool = False) -> torch.Tensor:
    """Positions: the ``n_select`` best of the earlier tokens (``topk`` called as the code calls it, on the
    scores before the window only), then the last ``window`` tokens; sorted, or with ``ordered`` in the order the
    code's cache holds them (``topk``'s order, then the window)."""
    batch, heads, _ = scores.shape
    top = scores.topk(n_select, dim=-1).indices if n_select > 0 else scores.new_zeros(batch, heads, 0).long()
    recent = torch.arange(seq - window, seq, device=scores.device).expand(batch, heads, window)
    kept = torch.cat([top, recent], dim=-1)
    return kept if ordered else kept.sort(dim=-1).values


def snapkv_keep(
    query: torch.Tensor,
    key: torch.Tensor,
    budget: int,
    window: int,
    kernel_size: int = 7,
    pooling: str = "max",
    ordered: bool = False,
) -> torch.Tensor:
    """SnapKV as ``SnapKVCluster.update_kv``: the last ``window`` queries vote (causal within the window),
    votes are pooled over the tokens before the window, and the ``budget - window`` best of those are kept with
    the window. ``query`` ``[batch, q_heads, seq, d]`` (at least the last ``window`` queries must be real),
    ``key`` ``[batch, kv_heads, seq, d]``."""
    _check_budget(budget, window)
    batch, q_heads, seq, _ = query.shape
    if seq < budget:
        return _all_positions(batch, q_heads, seq, key.device)
    scores = snapkv_scores(query, key, window, kernel_size, pooling)
    return _top_plus_window(scores, budget - window, seq, window, ordered)


def h2o_allowed(seq: int, window: int) -> torch.Tensor:
    """Which keys each prompt query sees in the paper's H2O scores, ``[seq, seq]`` bool.

    Only the last ``window`` x ``window`` block is masked (causally); every query before the window sees every
    key, later ones included. (The model's own causal mask is not applied by the code.)
    """
    allowed = torch.ones(seq, seq, dtype=torch.bool)
    for i in range(seq - window, seq):
        for j in range(seq - window, seq):
            if j > i:
                allowed[i, j] = False
    return allowed


def h2o_scores(query: torch.Tensor, key: torch.Tensor, window: int) -> torch.Tensor:
    """Accumulated attention ``[batch, q_heads, seq - window]`` from every prompt query to each earlier token,
    under :func:`h2o_allowed`. No pooling."""
    seq, d = key.shape[-2], key.shape[-1]
    keys = expand_kv_heads(key, query.shape[1])
    logits = torch.matmul(query, keys.transpose(-1, -2)) / math.sqrt(d)
    blocked = ~h2o_allowed(seq, window).to(logits.device)
    logits = logits + blocked.to(logits.dtype) * torch.finfo(logits.dtype).min
    probs = _softmax_like_paper(logits)
    return probs[..., : seq - window].sum(dim=-2)


def h2o_keep(query: torch.Tensor, key: torch.Tensor, budget: int, window: int, ordered: bool = False) -> torch.Tensor:
    """H2O as ``H2OKVCluster.update_kv``: the ``budget - window`` earlier tokens with the most accumulated
    attention (see :func:`h2o_scores`), plus the window. ``query`` holds every prompt query."""
    _check_budget(budget, window)
    batch, q_heads, seq, _ = query.shape
    if seq < budget:
        return _all_positions(batch, q_heads, seq, key.device)
    return _top_plus_window(h2o_scores(query, key, window), budget - window, seq, window, ordered)


def streamingllm_keep(batch: int, q_heads: int, seq: int, budget: int, window: int, device=None) -> torch.Tensor:
    """StreamingLLM as ``StreamingLLMKVCluster.update_kv``: the first ``budget - window`` tokens and the last
    ``window``. The scripts set ``window = budget - 4`` for LongBench and RULER (4 sinks, the rest recent) and
    ``window = 32`` for the needle test (``budget - 32`` first tokens)."""
    _check_budget(budget, window)
    if seq < budget:
        return _all_positions(batch, q_heads, seq, device)
    first = list(range(budget - window))
    last = list(range(seq - window, seq))
    kept = torch.tensor(first + last, dtype=torch.long, device=device)
    return kept.expand(batch, q_heads, budget).clone()


def pyramidkv_layer_tokens(seq: int, budget: int, window: int, num_layers: int, beta: int = 20) -> list[int]:
    """Tokens each layer keeps (window included) under ``PyramidKVCluster.update_kv``.

    With ``S = budget - window``: a prompt shorter than ``budget`` is kept whole; one shorter than ``2 S`` keeps
    ``budget`` tokens in every layer (SnapKV). Otherwise the top layer selects ``lo = S // beta`` tokens, the
    bottom one ``hi = 2 S - lo``; if ``hi >= seq - window`` it becomes ``seq - window`` and ``lo = 2 S - hi``.
    Layer ``l`` selects ``hi - l * step`` with the integer ``step = (hi - lo) // (num_layers - 1)``, so the
    selected counts sum to at least ``num_layers * S`` (the floor leaves the upper layers a little more).
    """
    if num_layers < 2:
        raise ValueError("the paper's pyramid divides by num_layers - 1: it needs at least 2 layers")
    _check_budget(budget, window)
    selected = budget - window
    if seq < budget:
        return [seq] * num_layers
    if seq < 2 * selected:
        return [budget] * num_layers
    lo = selected // beta
    hi = 2 * selected - lo
    if hi >= seq - window:
        hi = seq - window
        lo = 2 * selected - hi
    step = (hi - lo) // (num_layers - 1)
    return [hi - layer * step + window for layer in range(num_layers)]


def pyramidkv_keep(
    query: torch.Tensor,
    key: torch.Tensor,
    budget: int,
    window: int,
    layer_idx: int,
    num_layers: int,
    kernel_size: int = 7,
    pooling: str = "max",
    beta: int = 20,
    ordered: bool = False,
) -> torch.Tensor:
    """PyramidKV: SnapKV's pooled votes, with the layer's count from :func:`pyramidkv_layer_tokens`."""
    batch, q_heads, seq, _ = query.shape
    tokens = pyramidkv_layer_tokens(seq, budget, window, num_layers, beta)[layer_idx]
    if seq < budget:
        return _all_positions(batch, q_heads, seq, key.device)
    scores = snapkv_scores(query, key, window, kernel_size, pooling)
    return _top_plus_window(scores, tokens - window, seq, window, ordered)


# ------------------------------------------------------------------------------------------------ quantization
def hqq_cache_kv_roundtrip(
    keys: torch.Tensor,
    values: torch.Tensor,
    bits: int,
    group_size: int = 64,
    axis_key: int = 1,
    axis_value: int = 0,
    optimize: bool | None = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values as transformers' HQQ quantized cache returns them once quantized.

    The paper's runs pass ``cache_implementation="quantized"`` with ``backend="HQQ"``, ``nbits``,
    ``q_group_size`` (64), ``axis_key`` (1 for "KIVI", 0 for "FlexGen") and leave ``axis_value`` at its default
    0; ``residual_length`` equals the number of generated tokens, so the whole (pruned) prompt is quantized once
    at prefill and the generated tokens are never quantized. Inputs ``[batch, heads, tokens, head_dim]`` (the
    paper's cache holds query-head rows); needs the ``hqq`` package.

    The cache calls hqq's ``Quantizer.quantize`` without ``optimize``, so hqq's default applies: ``False`` up to
    hqq 0.2.6 (May 2025), ``True`` from 0.2.7 on. The paper pinned transformers 4.42 (mid-2024) and not hqq, so
    its runs most likely had no optimizer: ``optimize=False`` (default here) reproduces that, ``True`` runs
    HQQ's optimizer, and ``None`` goes through transformers' own ``HQQQuantizedLayer`` (first ``update``
    quantizes the prefill; dequantizing its codes gives what every decoding step reads) with the installed hqq's
    default.
    """
    if optimize is None:
        from transformers.cache_utils import HQQQuantizedLayer

        layer = HQQQuantizedLayer(
            nbits=bits, axis_key=axis_key, axis_value=axis_value, q_group_size=group_size, residual_length=1 << 30
        )
        layer.update(keys, values)
        return layer._dequantize(layer._quantized_keys), layer._dequantize(layer._quantized_values)
    return (
        _hqq_like_the_cache(keys, bits, group_size, axis_key, optimize),
        _hqq_like_the_cache(values, bits, group_size, axis_value, optimize),
    )


def _hqq_like_the_cache(x: torch.Tensor, bits: int, group_size: int, axis: int, optimize: bool) -> torch.Tensor:
    """hqq's quantize/dequantize with the arguments transformers' HQQ cache layer uses, ``optimize`` explicit."""
    from hqq.core.quantize import Quantizer

    codes, meta = Quantizer.quantize(
        x.contiguous(), axis=axis, device=x.device, compute_dtype=x.dtype, nbits=bits, group_size=group_size,
        optimize=optimize,
    )
    meta["compute_dtype"] = x.dtype
    Quantizer.cuda(codes, meta=meta, device=x.device)
    return Quantizer.dequantize(codes, meta)


def hqq_cache_roundtrip(
    x: torch.Tensor, bits: int, group_size: int = 64, axis: int = 1, optimize: bool | None = False
) -> torch.Tensor:
    """One tensor through :func:`hqq_cache_kv_roundtrip` with ``axis`` (keys' path)."""
    return hqq_cache_kv_roundtrip(x, x, bits, group_size, axis, axis, optimize)[0]


def hqq_group_members(shape: tuple[int, ...], group_size: int, axis: int) -> torch.Tensor:
    """Flat indices of the numbers sharing one scale and zero, ``[groups, group_size]``.

    HQQ views the flattened tensor as ``[-1, group_size]`` for ``axis=1`` (runs of ``group_size`` consecutive
    numbers: along the head dimension, i.e. per token and head) and as ``[group_size, -1]`` for ``axis=0``
    (column ``c`` of that view: numbers ``c, c + M, c + 2M, ...`` with ``M = numel / group_size``; for a
    ``[1, heads, tokens, d]`` cache that is one channel at rows spaced ``heads * tokens / group_size`` apart in
    (head, token) order, i.e. across heads).
    """
    numel = math.prod(shape)
    if numel % group_size:
        raise ValueError(f"{numel} numbers do not split into groups of {group_size} (HQQ asserts it)")
    flat = torch.arange(numel)
    if axis == 1:
        return flat.view(-1, group_size)
    if axis == 0:
        return flat.view(group_size, -1).t()
    raise ValueError(f"axis={axis}: allowed 0 or 1")


def hqq_minmax_roundtrip(x: torch.Tensor, bits: int, group_size: int, axis: int) -> torch.Tensor:
    """Plain min-max asymmetric quantization over HQQ's groups (HQQ with ``optimize=False``), in float32, own
    code: scale ``(2^bits - 1) / (max - min)`` (1 when the range is at most 1e-4, at most 2e4), zero
    ``-min * scale``, codes ``round(x * scale + zero)`` clipped to ``[0, 2^bits - 1]``, back as
    ``(code - zero) / scale``: what the cache computed with the hqq of the paper's time (``optimize=False``;
    hqq up to 0.2.2 lacks the 1e-4 guard, which only changes groups whose range is at most 1e-4)."""
    members = hqq_group_members(tuple(x.shape), group_size, axis)
    flat = x.float().flatten()
    groups = flat[members]
    lo, hi = groups.min(dim=1, keepdim=True).values, groups.max(dim=1, keepdim=True).values
    top = 2**bits - 1
    span = hi - lo
    scale = torch.where(span.abs() <= 1e-4, torch.ones_like(span), top / span).clamp(max=2e4)
    zero = -lo * scale
    codes = (groups * scale + zero).round().clamp(0, top)
    out = torch.empty_like(flat)
    out[members] = (codes - zero) / scale
    return out.view(x.shape)


def hqq_outlier_roundtrip(
    x: torch.Tensor, bits: int, group_size: int = 64, axis: int = 1, threshold: float = 6.0,
    optimize: bool | None = False,
) -> torch.Tensor:
    """The paper's outlier cache (``quant_method=kvquant``, ``pyramidkv/quantcache.py`` ``KVQuantizedCache``):
    numbers with ``|x| > threshold`` are set aside exactly, replaced by 0 in the tensor that HQQ then quantizes
    as the cache does (the zeros take part in their groups' min and max), and written back after dequantization.
    """
    outliers = x.abs() > threshold
    rest = x.masked_fill(outliers, 0)
    out = hqq_cache_roundtrip(rest, bits, group_size, axis, optimize)
    return torch.where(outliers, x.to(out.dtype), out)


# ----------------------------------------------------------------------------------------------- comparisons
def agree_ties_aside(kept: torch.Tensor, expected: torch.Tensor, scores: torch.Tensor, atol: float = 1e-6) -> bool:
    """Whether two selections ``[batch, heads, kept]`` agree except for tokens tied at the cut-off.

    ``scores`` ``[batch, heads, seq - window]`` are the reference's scores of the tokens before the window. Max
    pooling makes plateaus of equal scores, so two correct implementations may take different members of the
    plateau at the cut-off; every token in the symmetric difference must score (within ``atol``) what the
    lowest-scored selected token of ``expected`` scores, and both selections must have the same size.
    """
    if kept.shape != expected.shape:
        return False
    n_before = scores.shape[-1]
    for b in range(kept.shape[0]):
        for h in range(kept.shape[1]):
            mine, theirs = set(kept[b, h].tolist()), set(expected[b, h].tolist())
            if mine == theirs:
                continue
            chosen = [p for p in theirs if p < n_before]
            if not chosen:
                return False
            cut = float(scores[b, h, chosen].min())
            for p in mine ^ theirs:
                if p >= n_before or abs(float(scores[b, h, p]) - cut) > atol:
                    return False
    return True
