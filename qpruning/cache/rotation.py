"""A fixed randomized Hadamard rotation of each head's keys and values (as in QuaRot, Ashkboos et al. 2024).

Min-max group quantization at 2 bits is ruined by a few outlier channels: their range sets the step of every group
they fall in. An orthogonal rotation spreads an outlier over all channels before quantizing, and attention does not
change: with ``R`` orthogonal, ``q . k = (q R) . (k R)`` and ``sum_j p_j v_j = (sum_j p_j (v_j R)) R^T``. So a
rotated layer stores every key and value in the rotated basis (``x' = x @ R``, row vectors), rotates the query once
per attention call instead of every key, and rotates the output back (:meth:`CompressedLayer.attend
<qpruning.cache.layer.CompressedLayer.attend>`).

``R = H_d diag(s) / sqrt(d)``: ``H_d`` is the Sylvester Hadamard matrix of order ``d = head_dim`` (a power of two)
and ``s`` a vector of random signs drawn from ``torch.Generator().manual_seed(ROTATION_SEED + layer)``, so each
layer has its own rotation and every run gets the same ones. The layer stores only its signs (int8, ``d`` bytes,
counted in its bytes as ``rotation``); ``H_d`` and ``R`` are working matrices rebuilt from them, held per device
like the float32 scratch buffer of :mod:`qpruning.backends.reference` and, like it, not part of the cache.
"""

from __future__ import annotations

import functools

import torch

from qpruning.errors import ConfigError

ROTATION_SEED = 0x5EED
"""Layer ``i``'s signs come from ``torch.Generator().manual_seed(ROTATION_SEED + i)``."""


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_rotatable(head_dim: int) -> None:
    """Raise a one-line :class:`ConfigError` unless ``head_dim`` has a Hadamard matrix here (a power of two)."""
    if not is_power_of_two(head_dim):
        raise ConfigError(
            f"quant.rotate=true needs a head_dim that is a power of two (Sylvester Hadamard), this model has {head_dim}",
            "allowed: head_dim 32, 64, 128, 256...; or rotate=false",
        )


@functools.lru_cache(maxsize=8)
def hadamard(d: int) -> torch.Tensor:
    """The Sylvester Hadamard matrix of order ``d`` (entries +-1, float32, on the CPU): ``H H^T = d I``."""
    check_rotatable(d)
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_signs(head_dim: int, layer: int) -> torch.Tensor:
    """Layer ``layer``'s sign vector, ``int8 [head_dim]`` of +-1 (deterministic, see :data:`ROTATION_SEED`)."""
    generator = torch.Generator().manual_seed(ROTATION_SEED + layer)
    bits = torch.randint(0, 2, (head_dim,), generator=generator, dtype=torch.int8)
    return 1 - 2 * bits


class Rotation:
    """One layer's orthogonal rotation ``R = H diag(signs) / sqrt(d)``, applied to row vectors (``x @ R``).

    Holds the signs (the only stored part, :meth:`nbytes`); the float32 matrix is a working copy per device,
    rebuilt from them on first use.
    """

    def __init__(self, signs: torch.Tensor) -> None:
        self.signs = signs.to(torch.int8)
        self._matrices: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def for_layer(cls, head_dim: int, layer: int) -> Rotation:
        check_rotatable(head_dim)
        return cls(random_signs(head_dim, layer))

    @property
    def head_dim(self) -> int:
        return self.signs.numel()

    def matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``R`` (float32 ``[d, d]``) on ``device`` (a working matrix, not counted in the cache's bytes)."""
        device = torch.device(device)
        if device not in self._matrices:
            d = self.head_dim
            # H diag(s): column j of H times s_j; then the 1/sqrt(d) that makes it orthogonal
            r = hadamard(d) * self.signs.float().unsqueeze(0) / d**0.5
            self._matrices[device] = r.to(device)
        return self._matrices[device]

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ R`` in float32 (``x``: ``[..., d]``)."""
        return x.float() @ self.matrix(x.device)

    def unrotate(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ R^T`` in float32: back to the original basis."""
        return x.float() @ self.matrix(x.device).T

    def nbytes(self) -> int:
        return self.signs.numel() * self.signs.element_size()
