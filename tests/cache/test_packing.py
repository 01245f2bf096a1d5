import pytest
import torch

from qpruning.cache.packing import pack, unpack


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_then_unpack_returns_the_codes(bits, rng):
    codes = torch.randint(0, 1 << bits, (5, 7, 64), generator=rng, dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (5, 7, 64 * bits // 8)
    assert torch.equal(unpack(packed, bits), codes)


def test_four_bit_codes_share_a_byte_low_bits_first():
    codes = torch.tensor([[3, 12, 15, 0]], dtype=torch.uint8)
    assert pack(codes, 4).tolist() == [[3 | (12 << 4), 15]]


def test_two_bit_codes_fill_a_byte_from_the_low_bits():
    codes = torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8)
    assert pack(codes, 2).tolist() == [[1 | (2 << 2) | (3 << 4)]]


def test_unpackable_width_is_rejected():
    with pytest.raises(ValueError, match="packable widths"):
        pack(torch.zeros(4, dtype=torch.uint8), 3)
