"""Grouped min-max quantization: error bounds, exact cases, and which way the groups run."""

import pytest
import torch

from qpruning.cache.quantized import GroupAxis, OutlierFilter, cat_rows, quantize
from qpruning.cache.quantizers import HQQ, KIVI, FlexGen, KIVIOutlier, get_quantizer

# Relative Frobenius error ||x - x'|| / ||x|| on standard Gaussian data, upper bounds (measured values
# +~15%; docs/quantization.md gives the derivation: step = range / (2^b - 1), rms error = step / sqrt(12)).
ERROR_BOUNDS = {
    (2, 32): 0.45, (2, 64): 0.52, (2, 128): 0.58,
    (4, 32): 0.090, (4, 64): 0.105, (4, 128): 0.115,
    (8, 32): 0.0055, (8, 64): 0.0062, (8, 128): 0.0069,
}


@pytest.mark.parametrize("axis", list(GroupAxis))
@pytest.mark.parametrize(("bits", "group_size"), list(ERROR_BOUNDS))
def test_gaussian_round_trip_error_is_within_the_stated_bound(bits, group_size, axis, rng):
    x = torch.randn(1024, 128, generator=rng)
    q = quantize(x, bits, group_size, axis)
    error = ((q.dequantize() - x).norm() / x.norm()).item()
    assert error < ERROR_BOUNDS[(bits, group_size)]
    # Not vacuous: quantization does lose information, about as much as the bound says.
    assert error > 0.5 * ERROR_BOUNDS[(bits, group_size)]


@pytest.mark.parametrize("axis", list(GroupAxis))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_every_number_is_within_half_a_step_of_its_group(bits, axis, rng):
    x = torch.randn(256, 64, generator=rng)
    q = quantize(x, bits, 32, axis)
    step = q.scale.float()
    if axis is GroupAxis.CHANNELS:
        per_number = step.repeat_interleave(32, dim=1)
    else:
        per_number = step.repeat_interleave(32, dim=0)
    # Half a step, plus the rounding of the zero to 16 bits.
    slack = q.zero.float().abs().repeat_interleave(32, dim=1 if axis is GroupAxis.CHANNELS else 0) * 2**-10
    assert ((q.dequantize() - x).abs() <= per_number / 2 + slack + 1e-6).all()


@pytest.mark.parametrize("axis", list(GroupAxis))
def test_constant_groups_come_back_exactly(axis, rng):
    # Values a 16-bit zero holds exactly; each group is constant, groups differ.
    levels = torch.randint(-64, 64, (8, 4), generator=rng).float() / 8
    if axis is GroupAxis.CHANNELS:
        x = levels.repeat_interleave(32, dim=1)  # [8 tokens, 128 channels], constant along channel groups
    else:
        x = levels.repeat_interleave(32, dim=0)[:, :4].repeat(1, 16)  # constant along token groups
    for bits in (2, 4, 8):
        q = quantize(x, bits, 32, axis)
        assert torch.equal(q.dequantize(), x)
        assert (q.scale == 0).all()


def test_kivi_groups_keys_along_tokens_and_values_along_channels(rng):
    quantizer = KIVI(bits=4, group_size=64)
    x = torch.randn(128, 128, generator=rng)
    keys, values = quantizer.quantize_keys(x, torch.float16), quantizer.quantize_values(x, torch.float16)
    assert keys.axis is GroupAxis.TOKENS and keys.scale.shape == (128 // 64, 128)
    assert values.axis is GroupAxis.CHANNELS and values.scale.shape == (128, 128 // 64)
    flexgen = FlexGen(bits=4, group_size=64)
    assert flexgen.quantize_keys(x, torch.float16).scale.shape == (128, 128 // 64)


def test_per_channel_groups_are_exact_on_channel_constant_data_and_per_token_ones_are_not(rng):
    # Each channel constant over time, channels different: exactly KIVI's per-channel key groups.
    channel_values = torch.randint(-100, 100, (1, 128), generator=rng).float() / 16
    x = channel_values.repeat(64, 1)
    assert torch.equal(KIVI(bits=2).quantize_keys(x, torch.float16).dequantize(), x)
    assert not torch.equal(FlexGen(bits=2).quantize_keys(x, torch.float16).dequantize(), x)


def test_an_outlier_channel_hurts_flexgen_keys_more_than_kivi_keys(rng):
    x = torch.randn(512, 128, generator=rng)
    x[:, 7] += 40.0  # one key channel with a large offset, as observed in real models' keys
    inliers = torch.ones(128, dtype=torch.bool)
    inliers[7] = False

    def error(quantizer):
        y = quantizer.quantize_keys(x, torch.float16).dequantize()
        return ((y - x)[:, inliers].norm() / x[:, inliers].norm()).item()

    kivi, flexgen = error(KIVI(bits=4)), error(FlexGen(bits=4))
    assert kivi < 0.11  # untouched: the outlier channel has its own groups
    assert flexgen > 3 * kivi


def test_outlier_filter_keeps_the_largest_numbers_exactly_and_shrinks_the_rest_of_the_error(rng):
    x = torch.randn(256, 128, generator=rng)
    spikes = torch.randint(0, x.numel(), (200,), generator=rng)
    x.view(-1)[spikes] = 30.0
    plain = FlexGen(bits=4).quantize_keys(x, torch.float16)
    filtered = quantize(x, 4, 64, GroupAxis.CHANNELS, outliers=OutlierFilter(fraction=0.01))
    y = filtered.dequantize()
    assert filtered.num_outliers == -(-x.numel() // 100)
    assert torch.equal(y.view(-1)[spikes], x.view(-1)[spikes])
    assert (y - x).norm() < 0.5 * (plain.dequantize() - x).norm()
    by_threshold = quantize(x, 4, 64, GroupAxis.CHANNELS, outliers=OutlierFilter(fraction=None, threshold=6.0))
    assert by_threshold.num_outliers == int((x.abs() > 6.0).sum())


def test_outlier_presets_filter_one_percent():
    assert KIVIOutlier().outliers == OutlierFilter(fraction=0.01)
    assert get_quantizer("flexgen_outlier").outliers.fraction == 0.01


def test_hqq_without_optimization_matches_min_max(rng):
    x = torch.randn(128, 128, generator=rng)
    for axis_quantizer in (HQQ(bits=4), HQQ(bits=4, layout="flexgen")):
        ours = KIVI(bits=4) if axis_quantizer.layout == "kivi" else FlexGen(bits=4)
        a = axis_quantizer.quantize_keys(x, torch.float16).dequantize()
        b = ours.quantize_keys(x, torch.float16).dequantize()
        step = (x.max() - x.min()) / 15
        assert (a - b).abs().max() <= step


def test_hqq_optimizer_runs_and_stays_within_the_bound(rng):
    x = torch.randn(128, 128, generator=rng)
    y = HQQ(bits=4, optimize=True).quantize_values(x, torch.float16).dequantize()
    assert ((y - x).norm() / x.norm()).item() < ERROR_BOUNDS[(4, 64)] * 1.5


def test_appending_rows_keeps_each_rows_tokens_together(rng):
    rows, d = 3, 128
    a = torch.randn(rows * 64, d, generator=rng)
    b = torch.randn(rows * 64, d, generator=rng)
    outliers = OutlierFilter(fraction=0.01)
    qa = quantize(a, 4, 64, GroupAxis.TOKENS, outliers=outliers)
    qb = quantize(b, 4, 64, GroupAxis.TOKENS, outliers=outliers)
    joined = cat_rows([qa, qb], rows).dequantize().view(rows, 128, d)
    expected = torch.cat([qa.dequantize().view(rows, 64, d), qb.dequantize().view(rows, 64, d)], dim=1)
    assert torch.equal(joined, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 3}, "allowed: 2, 4, 8, 16"),
        ({"group_size": 48}, "allowed: 32, 64, 128"),
        ({"residual_length": 96}, "multiple of group_size"),
    ],
)
def test_bad_quantizer_settings_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KIVI(**kwargs)


def test_group_size_must_divide_head_dim_for_per_token_groups():
    with pytest.raises(ValueError, match="does not divide head_dim=64"):
        KIVI(bits=4, group_size=128).validate_head_dim(64)
    KIVI(bits=16, group_size=128).validate_head_dim(64)  # nothing is quantized at 16 bits


def test_unknown_quantizer_lists_the_known_ones():
    with pytest.raises(ValueError, match="allowed: kivi, flexgen, kivi_outlier, flexgen_outlier, hqq"):
        get_quantizer("int4")


# -- half-precision inputs and storage (models run in bfloat16 or float16) ------------------------------------

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
STORAGE_DTYPES = [torch.float16, torch.bfloat16]


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("storage", STORAGE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("axis", list(GroupAxis))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_every_number_is_within_half_a_stored_step_whatever_the_input_and_storage_dtype(bits, axis, dtype, storage, rng):
    # Offset and spread so that the zeros and scales are not round numbers in any 16-bit format.
    x = (torch.randn(512, 128, generator=rng) * 3 + 1.3).to(dtype)
    q = quantize(x, bits, 32, axis, storage)
    assert q.scale.dtype == storage and q.zero.dtype == storage
    dim = 1 if axis is GroupAxis.CHANNELS else 0
    step = q.scale.float().repeat_interleave(32, dim=dim)
    error = (q.dequantize() - x.float()).abs()
    # Codes are rounded against the stored scale and zero, which cover the whole group: no number is clamped, so
    # none is further than half a stored step from its original (up to float32 arithmetic).
    assert (error <= step / 2 * (1 + 1e-5) + 1e-6).all(), f"worst: {(error / step).max().item():.3f} steps"


@pytest.mark.parametrize("storage", STORAGE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("dtype", DTYPES[1:], ids=dtype_id)
@pytest.mark.parametrize("axis", list(GroupAxis))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_half_precision_inputs_keep_the_gaussian_error_bound(bits, axis, dtype, storage, rng):
    x = torch.randn(1024, 128, generator=rng).to(dtype)
    q = quantize(x, bits, 64, axis, storage)
    error = ((q.dequantize() - x.float()).norm() / x.float().norm()).item()
    assert 0.5 * ERROR_BOUNDS[(bits, 64)] < error < ERROR_BOUNDS[(bits, 64)]


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=dtype_id)
def test_outliers_of_a_half_precision_tensor_come_back_exactly_in_its_dtype(dtype, rng):
    x = torch.randn(256, 128, generator=rng)
    x.view(-1)[torch.randint(0, x.numel(), (100,), generator=rng)] = 37.3
    x = x.to(dtype)
    q = quantize(x, 4, 64, GroupAxis.TOKENS, dtype, outliers=OutlierFilter(fraction=0.01))
    assert q.outlier_value.dtype == dtype
    kept = q.outlier_index.long()
    assert torch.equal(q.dequantize(dtype).view(-1)[kept], x.view(-1)[kept])
