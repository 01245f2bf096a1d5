"""Rotary position embeddings of a layer's keys, removed before quantizing and applied again after (KVQuant).

RoPE (Su et al., 2021) rotates each pair of channels ``(i, i + d/2)`` of a key at position ``p`` by the angle
``p * inv_freq[i]`` (transformers' ``rotate_half`` layout): ``k' = s (k cos + rotate_half(k) sin)``, with ``s`` the
rotary's ``attention_scaling`` (1 for plain RoPE). KVQuant (Hooper et al., 2024, Sec. 3.2) quantizes keys *before*
this rotation: a pre-RoPE key channel has a stable outlier range over tokens, which the rotation mixes with its
partner channel at a position-dependent angle, and per-channel groups quantize it better.

The model hands the cache post-RoPE keys. :meth:`KeyRotary.remove` undoes the rotation exactly (the inverse of a
rotation by ``theta`` is the rotation by ``-theta``, and ``rotate_half(rotate_half(k)) = -k``, so
``k' cos - rotate_half(k') sin = s k``), and :meth:`KeyRotary.apply` re-applies it at the stored positions after
dequantization, as the model would have. The positions are those the model used (recorded from its rotary module's
``position_ids``, :meth:`qpruning.cache.cache.QPrunedCache.record_positions`); each stored key's position is held
with it (int32, counted in the cache's ``index`` bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qpruning.cache.quantized import QuantizedTensor
from qpruning.errors import ConfigError

# RoPE variants this module does not reproduce: interleaved channel pairs, inverse frequencies that change with
# the sequence length.
INTERLEAVED_MODEL_TYPES = ("cohere", "cohere2", "gptj", "glm", "glm4", "chatglm")
DYNAMIC_ROPE_TYPES = ("dynamic", "longrope")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[-x2, x1]`` of ``x = [x1, x2]`` (halves of the last dimension), as transformers' ``rotate_half``."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


@dataclass(frozen=True)
class KeyRotary:
    """One layer's RoPE: ``inv_freq`` (float32 ``[head_dim / 2]``) and the rotary's ``attention_scaling``."""

    inv_freq: torch.Tensor
    attention_scaling: float = 1.0

    @classmethod
    def from_module(cls, rotary, layer_type: str | None = None) -> KeyRotary:
        """The RoPE of a transformers rotary module (``model.model.rotary_emb``): its ``inv_freq`` buffer, or
        ``{layer_type}_inv_freq`` for one that holds one per layer type (Gemma 3)."""
        inv_freq = getattr(rotary, f"{layer_type}_inv_freq", None) if layer_type else None
        scaling = getattr(rotary, f"{layer_type}_attention_scaling", None) if layer_type else None
        if inv_freq is None:
            inv_freq = getattr(rotary, "inv_freq", None)
            scaling = getattr(rotary, "attention_scaling", 1.0)
        if not isinstance(inv_freq, torch.Tensor):
            raise ConfigError(
                f"quant=kvquant re-applies the model's RoPE to its keys, and {type(rotary).__name__} has no inv_freq",
                "allowed: models with transformers' rotary embedding (Llama, Qwen, Mistral, Gemma...), or another quant",
            )
        return cls(inv_freq.detach().float().cpu(), float(scaling if scaling is not None else 1.0))

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ``cos``/``sin`` ``[..., head_dim]`` at ``positions`` ``[...]``, times the scaling."""
        inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float().unsqueeze(-1) * inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != 2 * self.inv_freq.numel():
            raise ConfigError(
                f"quant=kvquant: RoPE covers {2 * self.inv_freq.numel()} of the {x.shape[-1]} channels of a head "
                "(partial rotary)", "allowed: models whose RoPE rotates the whole head, or another quant",
            )

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Pre-RoPE keys ``x`` ``[..., head_dim]`` rotated at ``positions`` ``[...]`` (float32)."""
        self._check(x)
        cos, sin = self.cos_sin(positions)
        x = x.float()
        return x * cos + rotate_half(x) * sin

    def remove(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Post-RoPE keys ``x`` ``[..., head_dim]`` at ``positions`` back to pre-RoPE (float32)."""
        self._check(x)
        cos, sin = self.cos_sin(positions)
        x = x.float()
        return (x * cos - rotate_half(x) * sin) / self.attention_scaling**2


@dataclass(frozen=True)
class KeyRope:
    """The RoPE of keys handed to a quantizer: the layer's rotary and each key's position (``[n]``, row by row
    as the keys ``[n, head_dim]``)."""

    rotary: KeyRotary
    positions: torch.Tensor


@dataclass
class PreRopeKeys(QuantizedTensor):
    """Keys quantized before RoPE (KVQuant): the codes, scales and zeros of the un-rotated keys, and each key's
    position (int32, counted as ``index`` bytes). :meth:`dequantize` gives the post-RoPE keys the model's attention
    expects (the rotation re-applied at each position), so every reader of a :class:`QuantizedTensor` that goes
    through :meth:`dequantize` reads them correctly; a fused kernel reading the codes directly would not, and layers
    holding them run the reference attention (:meth:`KVQuantizer.needs_reference_attention`)."""

    rotary: KeyRotary | None = None
    positions: torch.Tensor | None = None

    def _rope(self) -> tuple[KeyRotary, torch.Tensor]:
        if self.rotary is None or self.positions is None:
            raise ValueError("PreRopeKeys without a rotary and positions")
        return self.rotary, self.positions

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        rotary, positions = self._rope()
        return rotary.apply(super().dequantize(torch.float32), positions).to(dtype)

    def dequantize_into(self, out: torch.Tensor) -> None:
        out.copy_(self.dequantize(torch.float32).view(out.shape))

    def nbytes(self) -> dict[str, int]:
        out = super().nbytes()
        _, positions = self._rope()
        out["index"] = positions.numel() * positions.element_size()
        return out

    def cat_fields(self, parts: list[QuantizedTensor], rows: int) -> dict:
        positions = []
        for part in parts:
            if not isinstance(part, PreRopeKeys):
                raise ValueError("cat_rows: pre-RoPE keys appended to keys of another kind")
            positions.append(part._rope()[1].view(rows, -1))
        return {"rotary": self.rotary, "positions": torch.cat(positions, dim=1).reshape(-1)}


def check_rope_config(config) -> None:
    """Raise a one-line :class:`ConfigError` for a model whose RoPE :class:`KeyRotary` does not reproduce (read from
    the configuration, before any weights load)."""
    text = getattr(config, "get_text_config", lambda: config)()
    model_type = getattr(text, "model_type", "")
    allowed = "allowed: models with RoPE in transformers' rotate_half layout over the whole head, or another quant"
    if model_type in INTERLEAVED_MODEL_TYPES:
        raise ConfigError(f"quant=kvquant: {model_type} rotates interleaved channel pairs", allowed)
    partial = getattr(text, "partial_rotary_factor", None)
    if partial is None:
        partial = (getattr(text, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    if partial is not None and float(partial) != 1.0:
        raise ConfigError(f"quant=kvquant: {model_type} rotates {partial:g} of each head (partial rotary)", allowed)
    for parameters in _rope_parameters(text):
        rope_type = parameters.get("rope_type") or parameters.get("type")
        if rope_type in DYNAMIC_ROPE_TYPES:
            raise ConfigError(
                f"quant=kvquant: rope_type={rope_type} changes the frequencies with the sequence length", allowed
            )


def _rope_parameters(config) -> list[dict]:
    found = []
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(config, name, None)
        if isinstance(value, dict):
            nested = [v for v in value.values() if isinstance(v, dict)]
            found += nested or [value]
    return found


def key_rotaries(model) -> list[KeyRotary]:
    """Each decoder layer's :class:`KeyRotary` (a sliding-window layer's own local RoPE where the model has one)."""
    decoder = model.get_decoder()
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    rotary = getattr(decoder, "rotary_emb", None)
    if rotary is None:
        raise ConfigError(
            f"quant=kvquant re-applies the model's RoPE, and {type(decoder).__name__} has no rotary_emb",
            "allowed: models with transformers' rotary embedding, or another quant",
        )
    local = getattr(decoder, "rotary_emb_local", None)  # Gemma 3 before transformers kept one module per type
    out = []
    for layer_type in layer_types:
        if local is not None and layer_type == "sliding_attention":
            out.append(KeyRotary.from_module(local))
        else:
            out.append(KeyRotary.from_module(rotary, layer_type))
    return out
