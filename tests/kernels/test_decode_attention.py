"""The fused decode-attention kernel equals the PyTorch reference on every cache layout.

On CPU these run through Triton's interpreter (``TRITON_INTERPRET=1``, set by the root conftest on machines without a GPU); on a GPU
with ``TRITON_INTERPRET=0`` the same tests check the compiled kernels. Two precisions are checked:

- ``dot="fp32"``: float32 matmul operands, exact under the interpreter, so any indexing, masking, unpacking,
  scale or merge mistake shows up as an error far above float32 rounding (tolerance 1e-5);
- the default (bfloat16 operands, emulated with round-to-nearest under the interpreter): what the GPU runs,
  checked at bfloat16 level (1.5e-2 relative).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="the fused decode kernels need Triton (pip install triton)")
pytest.importorskip("numpy", reason="Triton's interpreter needs numpy")

from qpruning.backends import reference_attention  # noqa: E402
from qpruning.backends.triton import fused_attention, interpreting  # noqa: E402
from qpruning.backends.triton import heuristics as hx  # noqa: E402
from qpruning.backends.triton import launch as da  # noqa: E402
from qpruning.cache.layer import CompressedLayer  # noqa: E402
from qpruning.cache.quantizers import KIVI, FlexGen, FlexGenOutlier, KIVIOutlier  # noqa: E402
from qpruning.transformers_api import cache_kwargs

INTERPRETED = interpreting()
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu")
HEAD_DIM = 128
EXACT = 1e-5
BF16_LEVEL = 1.5e-2
QUANTIZERS = {"kivi": KIVI, "flexgen": FlexGen, "kivi_outlier": KIVIOutlier, "flexgen_outlier": FlexGenOutlier}


def build_layer(
    quantizer,
    *,
    batch: int = 1,
    kv_heads: int = 2,
    seq: int = 150,
    kept: float = 0.8,
    ragged: bool = False,
    decoded: int = 0,
    residual: int = 3,
    dtype: torch.dtype = torch.float16,
    head_dim: int = HEAD_DIM,
    seed: int = 0,
) -> CompressedLayer:
    """A compressed layer from random keys/values, the way a model fills it.

    ``compress`` keeps ``kept`` of ``seq`` prompt tokens per row (the same count in every row, or a random count
    per row when ``ragged``), quantizing what fills whole groups and keeping the rest as a 16-bit tail; then
    ``decoded`` generated tokens are appended and flushed into the decoded segment (whole residual blocks), and
    ``residual`` more wait in the 16-bit residual window.
    """
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(batch, kv_heads, seq, head_dim, generator=g)
    values = torch.randn(batch, kv_heads, seq, head_dim, generator=g)
    # A few channels with large keys, as in real models (what per-channel key groups are for).
    keys[..., :4] *= 6
    layer = CompressedLayer()
    layer.update(keys.to(DEVICE), values.to(DEVICE))
    keep = torch.zeros(batch, kv_heads, seq, dtype=torch.bool)
    for b in range(batch):
        for h in range(kv_heads):
            n = int(seq * kept) if not ragged else int(torch.randint(seq // 3, seq + 1, (1,), generator=g))
            keep[b, h, torch.randperm(seq, generator=g)[:n]] = True
    layer.compress(keep.to(DEVICE), quantizer, dtype)
    for _ in range(decoded + residual):
        k = torch.randn(batch, kv_heads, 1, head_dim, generator=g).to(DEVICE, dtype)
        v = torch.randn(batch, kv_heads, 1, head_dim, generator=g).to(DEVICE, dtype)
        layer.residual_keys = torch.cat([layer.residual_keys, k], dim=2)
        layer.residual_values = torch.cat([layer.residual_values, v], dim=2)
        if layer.residual_keys.shape[2] == decoded and decoded:
            layer.flush()
    return layer


def random_query(layer: CompressedLayer, group: int, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    batch, kv_heads, head_dim = layer.shape
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, kv_heads * group, 1, head_dim, generator=g) * 2).to(DEVICE, dtype)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return ((out - ref).norm() / ref.norm()).item()


def check(layer: CompressedLayer, group: int, tol: float, **options) -> float:
    query = random_query(layer, group)
    scaling = layer.shape[2] ** -0.5
    ref = reference_attention(layer.segments(), query, scaling)
    out = fused_attention(layer.segments(), query, scaling, **options)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    err = relative_error(out, ref)
    assert err < tol, f"relative error {err:.2e} >= {tol:.0e}"
    return err


def kinds(layer: CompressedLayer) -> list[tuple[str, int | None]]:
    return [("q" if s.quantized else "16", s.uniform_length) for s in layer.segments()]


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("method", ["kivi", "flexgen"])
def test_every_layout_bits_and_group_size_matches_reference_exactly(method, bits, group_size):
    # GQA ratio 1, 2, 4 in turn, so that every ratio meets every layout and width.
    group = (1, 2, 4)[(bits // 4 + group_size // 64) % 3]
    layer = build_layer(QUANTIZERS[method](bits=bits, group_size=group_size), seq=170, residual=5)
    assert layer.segments()[0].quantized
    check(layer, group, EXACT, dot="fp32", split_tokens=64)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("method", ["kivi", "flexgen"])
def test_bf16_kernel_matches_reference_at_bf16_level(method, bits):
    layer = build_layer(QUANTIZERS[method](bits=bits, group_size=64), seq=170, residual=5)
    check(layer, 4, BF16_LEVEL)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("method", ["kivi", "flexgen"])
def test_every_layout_in_bfloat16_matches_reference_at_bf16_level(method, bits, group_size):
    # What a bfloat16 model runs (the GPU check's setting): bf16 storage, query and output, ragged rows and a
    # residual window, every width and group size; the kernel's bf16 operands against the reference's float32.
    layer = build_layer(QUANTIZERS[method](bits=bits, group_size=group_size), batch=2, seq=170, ragged=True,
                        residual=5, dtype=torch.bfloat16)
    query = random_query(layer, 2, dtype=torch.bfloat16)
    ref = reference_attention(layer.segments(), query, HEAD_DIM**-0.5)
    out = fused_attention(layer.segments(), query, HEAD_DIM**-0.5)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert relative_error(out, ref) < BF16_LEVEL


def test_sixteen_bit_layer_is_one_plain_segment_plus_residual():
    layer = build_layer(KIVI(bits=16), seq=100, residual=7)
    assert [s.quantized for s in layer.segments()] == [False, False]
    check(layer, 2, EXACT, dot="fp32", split_tokens=32)


@pytest.mark.parametrize("group", [1, 2, 4, 8])
def test_every_gqa_ratio_matches_reference(group):
    layer = build_layer(KIVI(bits=4, group_size=32), batch=2, kv_heads=2, seq=90, residual=2)
    check(layer, group, EXACT, dot="fp32")


@pytest.mark.parametrize("method", ["kivi", "flexgen"])
def test_ragged_rows_match_reference(method):
    layer = build_layer(QUANTIZERS[method](bits=4, group_size=32), batch=2, kv_heads=2, seq=160, ragged=True)
    lengths = layer.tokens_per_row()
    assert len(set(lengths.tolist())) > 1, "rows should have different lengths"
    assert any(s.uniform_length is None for s in layer.segments())
    check(layer, 2, EXACT, dot="fp32", split_tokens=32)


def test_ragged_sixteen_bit_rows_match_reference():
    layer = build_layer(KIVI(bits=16), batch=2, kv_heads=2, seq=120, ragged=True, residual=1)
    assert layer.segments()[0].uniform_length is None
    check(layer, 2, EXACT, dot="fp32", split_tokens=32)


@pytest.mark.parametrize("method", ["kivi", "flexgen"])
def test_prefix_tail_decoded_and_residual_segments_together_match_reference(method):
    layer = build_layer(QUANTIZERS[method](bits=2, group_size=32), seq=110, decoded=64, residual=5)
    segment_kinds = kinds(layer)
    assert segment_kinds[-2] == ("q", 64) and segment_kinds[-1] == ("16", 5), segment_kinds
    check(layer, 4, EXACT, dot="fp32", split_tokens=32)
    check(layer, 4, BF16_LEVEL)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("method", ["kivi_outlier", "flexgen_outlier"])
def test_outliers_are_corrected_exactly(method, bits):
    layer = build_layer(QUANTIZERS[method](bits=bits, group_size=64), batch=2, seq=140, ragged=True)
    quantized = layer.segments()[0]
    assert quantized.keys.num_outliers > 0 and quantized.values.num_outliers > 0
    check(layer, 2, EXACT, dot="fp32", split_tokens=64)


def test_outliers_matter_so_the_correction_is_tested():
    # Without the correction the error would be far above the tolerance: drop the outliers and compare.
    layer = build_layer(KIVIOutlier(bits=2, group_size=64), seq=140)
    query = random_query(layer, 2)
    ref = reference_attention(layer.segments(), query, HEAD_DIM**-0.5)
    segment = layer.segments()[0]
    segment.keys.outlier_index = segment.values.outlier_index = None
    out = fused_attention(layer.segments(), query, HEAD_DIM**-0.5, dot="fp32")
    assert relative_error(out, ref) > 100 * EXACT


@pytest.mark.parametrize("split_tokens,block_n", [(None, 64), (32, 64), (1000, 64), (16, 16)])
def test_result_does_not_depend_on_the_split(split_tokens, block_n):
    # (16, 16): more than MERGE_BLOCK_S splits per row, so the merge runs over several chunks of splits.
    layer = build_layer(FlexGen(bits=4, group_size=32), batch=2, seq=200, ragged=True, residual=4)
    query = random_query(layer, 2)
    ref = reference_attention(layer.segments(), query, HEAD_DIM**-0.5)
    out = fused_attention(layer.segments(), query, HEAD_DIM**-0.5, dot="fp32", split_tokens=split_tokens, block_n=block_n)
    assert relative_error(out, ref) < EXACT


def test_rows_without_tokens_in_a_segment_weigh_nothing():
    # A ragged 16-bit segment where some rows hold no token at all, beside a uniform residual window.
    from qpruning.cache.segments import Segment, gather_rows

    g = torch.Generator().manual_seed(3)
    batch, kv_heads, group, d = 2, 2, 2, HEAD_DIM
    rows = batch * kv_heads
    lengths = torch.tensor([0, 70, 0, 9], dtype=torch.int32)
    n = int(lengths.sum())
    ragged = Segment.build(torch.randn(n, d, generator=g).half(), torch.randn(n, d, generator=g).half(), lengths)
    window = Segment.build(
        torch.randn(rows * 2, d, generator=g).half(), torch.randn(rows * 2, d, generator=g).half(),
        torch.full((rows,), 2, dtype=torch.int32),
    )
    segments = [Segment(*(t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in (s.keys, s.values)),
                        s.lengths.to(DEVICE), s.uniform_length) for s in (ragged, window)]
    query = torch.randn(batch, kv_heads * group, 1, d, generator=g).to(DEVICE)
    keys, values, valid, _ = gather_rows(segments, torch.float32, rows, d, DEVICE)
    logits = torch.einsum("rgd,rtd->rgt", query.reshape(rows, group, d).float(), keys) * d**-0.5
    logits = logits.masked_fill(~valid[:, None, :], -math.inf)
    ref = torch.einsum("rgt,rtd->rgd", logits.softmax(-1), values).reshape(batch, 1, kv_heads * group, d)
    out = da.attend_segments(segments, query, d**-0.5, dot="fp32", split_tokens=32)
    assert relative_error(out, ref) < EXACT


def test_bf16_query_and_storage_give_bf16_output_at_bf16_level():
    layer = build_layer(KIVI(bits=4, group_size=64), seq=140, dtype=torch.bfloat16, residual=3)
    query = random_query(layer, 4, dtype=torch.bfloat16)
    ref = reference_attention(layer.segments(), query, HEAD_DIM**-0.5)
    out = fused_attention(layer.segments(), query, HEAD_DIM**-0.5)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, ref) < BF16_LEVEL


def test_fold_k_option_matches_reference():
    layer = build_layer(KIVI(bits=4, group_size=32), seq=100)
    check(layer, 4, EXACT, dot="fp32", fold_k=True)
    check(layer, 4, BF16_LEVEL, fold_k=True)


def test_small_head_dim_pads_byte_columns():
    # head_dim 64 at 2 bits: 16 bytes per token, the smallest tile tl.dot accepts; head_dim 96 is not a power of 2.
    for head_dim, bits in ((64, 2), (96, 4)):
        layer = build_layer(FlexGen(bits=bits, group_size=32), seq=70, head_dim=head_dim)
        check(layer, 2, EXACT, dot="fp32")


def test_multi_token_queries_fall_back_to_the_reference():
    layer = build_layer(KIVI(bits=4, group_size=32), seq=80, residual=4)
    batch, kv_heads, head_dim = layer.shape
    query = torch.randn(batch, kv_heads * 2, 3, head_dim).to(DEVICE)
    out = fused_attention(layer.segments(), query, head_dim**-0.5)
    assert torch.equal(out, reference_attention(layer.segments(), query, head_dim**-0.5))


def test_split_heuristic_fills_the_device_and_respects_blocks():
    cpu = torch.device("cpu")
    split, splits = hx.split_rows(8192, rows=8, block_n=64, device=cpu, split_tokens=None)
    assert split % 64 == 0 and split * splits >= 8192
    split, splits = hx.split_rows(100, rows=2, block_n=64, device=cpu, split_tokens=10)
    assert (split, splits) == (64, 2)
    constexprs, launch = hx.kernel_config(hx.Layout(4, hx.AXIS_TOKENS, hx.AXIS_CHANNELS, 32, 32, 128), 4)
    assert constexprs["BLOCK_N"] == 32 and constexprs["BLOCK_G"] == 16 and constexprs["BLOCK_C"] == 64
    assert launch["num_warps"] in (4, 8)


# ---------------------------------------------------------------------------------------------------------------
# End to end through a tiny model


def test_tiny_model_decoding_through_the_kernel_matches_the_reference_path():
    from transformers import AutoModelForCausalLM

    from qpruning import KVCompressor
    from qpruning.models import tiny_config
    from qpruning.pruners import SnapKV

    torch.manual_seed(0)
    config = tiny_config("llama", num_hidden_layers=1, vocab_size=512)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config).to(DEVICE).eval()
    prompt = torch.randint(3, 512, (2, 100), device=DEVICE)
    steps = torch.randint(3, 512, (2, 3), device=DEVICE)

    def decode_logits(kernel: str) -> torch.Tensor:
        compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4, group_size=32), tokens=64, kernel=kernel)
        out = []
        with torch.no_grad(), compressor.attach(model):
            cache = compressor.new_cache(model)
            model(prompt, **cache_kwargs(model, cache), use_cache=True)
            assert all((layer.backend is fused_attention) == (kernel == "on") for layer in cache.layers)
            for i in range(steps.shape[1]):
                out.append(model(steps[:, i : i + 1], **cache_kwargs(model, cache), use_cache=True).logits[:, -1])
        return torch.stack(out)

    reference = decode_logits("off")
    fused = decode_logits("on")  # on a CPU: the kernel under Triton's interpreter (conftest sets it)
    # The kernel's matmuls take bf16 operands (emulated in the interpreter): bf16-level agreement.
    assert relative_error(fused, reference) < 2e-2
    assert not torch.equal(fused, reference)


# ---------------------------------------------------------------------------------------------------------------
# Packaging


def run_without_interpreter_flag(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python without ``TRITON_INTERPRET`` in its environment."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_without_triton_the_package_imports_and_reports_the_kernel_unavailable():
    # Triton blocked: qpruning and qpruning.backends.triton import and available() is False, so the compressor
    # gives layers the reference backend.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import qpruning, qpruning.compressor, qpruning.backends.triton as k\n"
        "assert 'qpruning.backends.triton.launch' not in sys.modules\n"
        "assert 'qpruning.backends.triton.kernel' not in sys.modules\n"
        "assert k.available() is False\n"
        "print('ok')\n"
    )
    done = run_without_interpreter_flag(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_interpreter_flag_set_after_triton_was_imported_is_refused_clearly():
    # Triton decorates tl.zeros & co. when first imported; a later TRITON_INTERPRET=1 leaves them compiled-only
    # and every launch would fail deep in the interpreter. The kernel says what to do instead.
    code = (
        "import os, torch, triton.language\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from qpruning.cache.layer import CompressedLayer\n"
        "from qpruning.cache.quantizers import KIVI\n"
        "from qpruning.backends.triton import fused_attention\n"
        "layer = CompressedLayer(); layer.update(torch.randn(1, 2, 64, 64), torch.randn(1, 2, 64, 64))\n"
        "layer.compress(torch.ones(1, 2, 64, dtype=torch.bool), KIVI(bits=4, group_size=32), torch.float16)\n"
        "try:\n"
        "    fused_attention(layer.segments(), torch.randn(1, 4, 1, 64), 0.125)\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    done = run_without_interpreter_flag(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "set after Triton was imported" in done.stdout, done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize("method", ["kivi", "flexgen"])
def test_tiered_segments_at_several_bits_in_one_layer_match_reference_exactly(method):
    """Precision per token (quant.tiers): one layer holds segments at 8, 4 and 2 bits (and 16-bit tails)."""
    from qpruning.cache.tiers import split_tiers

    quantizer = QUANTIZERS[method](bits=4, group_size=32, tiers=[[0.2, 8], [0.3, 4], [0.5, 2]])
    g = torch.Generator().manual_seed(7)
    batch, kv_heads, seq = 2, 2, 300
    layer = CompressedLayer()
    layer.update(torch.randn(batch, kv_heads, seq, HEAD_DIM, generator=g).to(DEVICE),
                 torch.randn(batch, kv_heads, seq, HEAD_DIM, generator=g).to(DEVICE))
    keep = torch.rand(batch, kv_heads, seq, generator=g) < 0.7
    masks = split_tiers(keep, torch.randn(batch, kv_heads, seq, generator=g), quantizer.tier_plan)
    parts = [(m.to(DEVICE), quantizer.untiered(t.bits)) for m, t in zip(masks, quantizer.tier_plan)]
    layer.compress(keep.to(DEVICE), quantizer, torch.float16, tiers=parts)
    assert {s.keys.bits for s in layer.segments() if s.quantized} == {8, 4, 2}
    check(layer, group=3, tol=EXACT, dot="fp32")
