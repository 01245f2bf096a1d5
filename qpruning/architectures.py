"""Which models qpruning can compress, decided by what the model does, not by a list of names.

A decoder-only causal LM works when (1) its attention goes through transformers' attention interface
(``AttentionInterface``: qpruning registers its wrapper there), (2) its cache is the per-layer ``Cache`` of
keys and values that transformers' ``DynamicCache`` holds, one layer object per decoder layer, and (3) every
layer is plain softmax attention over those keys and values: global (``full_attention``) or within a sliding
window (``sliding_attention``). Llama, Mistral, Mixtral, Qwen2/2.5/3, Qwen3-MoE, Phi-3, Gemma 2 and 3, OLMo 2,
Granite, gpt-oss and Cohere 2 pass these checks; ``docs/models.md`` lists them and how each is tested.

:func:`check_supported` reads the configuration and the model class that ``AutoModelForCausalLM`` would build
(its modeling module is imported, no weights are read), so a run refuses a model that cannot work in one line
that names the missing property, before any weights load.

:func:`sliding_windows` says which layers attend within a sliding window, and how wide.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpruning.errors import ConfigError

GLOBAL = "full_attention"
SLIDING = "sliding_attention"

# Layer types transformers knows (configuration_utils.ALLOWED_ATTN_LAYER_TYPES) that are not plain softmax
# attention over a per-layer key/value cache, and why qpruning cannot compress them.
REFUSED_LAYER_TYPES = {
    "linear_attention": "linear-attention or state-space (Mamba, GDN) layers, whose state is not a key/value cache",
    "hybrid": "hybrid attention + state-space layers, whose state is not only a key/value cache",
    "hybrid_sliding": "hybrid sliding attention + state-space layers, whose state is not only a key/value cache",
    "chunked_attention": "chunked attention (attention restarts every chunk, Llama 4), which qpruning does not mask",
    "indexed_attention": "indexer-based sparse attention, whose indexer keys the cache would also have to hold",
    "compressed_sparse_attention": "compressed sparse attention, which caches compressed blocks, not keys",
    "heavily_compressed_attention": "heavily compressed attention, which caches compressed blocks, not keys",
    "minimax_m3_sparse": "lightning-index sparse attention, whose index the cache would also have to hold",
    "reference_sliding_attention": "a ring-buffered sliding window over generated tokens only",
    "window_attention": "non-overlapping window attention (an encoder's)",
    "conv": "convolution layers, whose state is not a key/value cache",
    "moe": "layers that are attention, Mamba or MoE by position (Nemotron-H)",
}


@dataclass(frozen=True)
class Refusal:
    """Why a model cannot be compressed: the property it lacks, in words."""

    model_type: str
    reason: str

    def error(self) -> ConfigError:
        return ConfigError(
            f"model_type={self.model_type!r} cannot be compressed by qpruning: {self.reason}",
            "allowed: a decoder-only causal LM whose layers are global or sliding-window softmax attention through "
            "transformers' attention interface (docs/models.md)",
        )


def text_config(config):
    """The decoder's configuration (the text model's, for a multimodal configuration)."""
    get = getattr(config, "get_text_config", None)
    return get(decoder=True) if callable(get) else config


def layer_types(config) -> list[str]:
    """Each layer's attention type: ``layer_types`` when the configuration has it, else every layer sliding when
    it sets a ``sliding_window`` it uses (Mistral v0.1, Phi-3 with a window), else every layer global."""
    config = text_config(config)
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    layers = getattr(config, "num_hidden_layers", None) or 0
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True):
        return [SLIDING] * layers
    return [GLOBAL] * layers


def sliding_windows(config) -> dict[int, int]:
    """``{layer: window}`` for every sliding-window layer (the window counts the current token, as transformers'
    sliding mask does: a query sees itself and the ``window - 1`` tokens before it)."""
    types = layer_types(config)
    if SLIDING not in types:
        return {}
    window = getattr(text_config(config), "sliding_window", None)
    if not window:
        return {}
    return {i: int(window) for i, t in enumerate(types) if t == SLIDING}


def causal_lm_class(config):
    """The class ``AutoModelForCausalLM`` builds for ``config`` (its module is imported, no weights), or None."""
    from transformers import AutoModelForCausalLM

    mapping = AutoModelForCausalLM._model_mapping
    try:
        return mapping[type(config)]
    except (KeyError, ValueError):
        return None


def refusal(config) -> Refusal | None:
    """Why qpruning cannot compress a model with ``config``, or None when it can."""
    model_type = getattr(config, "model_type", "unknown")
    if getattr(config, "is_encoder_decoder", False):
        return Refusal(model_type, "it is an encoder-decoder, and qpruning compresses the cache of decoder-only models")
    text = text_config(config)
    model_type = getattr(text, "model_type", model_type)
    if getattr(text, "kv_lora_rank", None) is not None:
        return Refusal(model_type, "it uses multi-head latent attention (kv_lora_rank), which caches a latent, not "
                                   "per-head keys and values")
    if getattr(text, "num_kv_shared_layers", 0):
        return Refusal(model_type, "its layers share key/value caches across layers (num_kv_shared_layers)")
    types = layer_types(config)
    others = sorted({t for t in types if t not in (GLOBAL, SLIDING)})
    if others:
        why = "; ".join(REFUSED_LAYER_TYPES.get(t, f"layers of type {t!r}, which qpruning does not know") for t in others)
        return Refusal(model_type, f"it has {', '.join(others)} layers: {why}")
    if not getattr(text, "num_attention_heads", None) or not getattr(text, "num_hidden_layers", None):
        return Refusal(model_type, "its configuration has no attention heads or layers (num_attention_heads, "
                                   "num_hidden_layers): not an attention decoder")
    if SLIDING in types and not getattr(text, "sliding_window", None):
        return Refusal(model_type, "it has sliding-window layers but no sliding_window size in its configuration")
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    if text.num_attention_heads % kv_heads:
        return Refusal(model_type, f"{text.num_attention_heads} query heads are not a multiple of {kv_heads} KV heads "
                                   "(grouped-query attention of whole groups is needed)")
    cls = causal_lm_class(config)
    if cls is not None:
        if getattr(cls, "_is_stateful", False):
            return Refusal(model_type, "it is stateful (a recurrent state besides the key/value cache)")
        if not getattr(cls, "_supports_attention_backend", False):
            return Refusal(model_type, f"{cls.__name__}'s attention does not go through transformers' attention "
                                       "interface (_supports_attention_backend is not set)")
    elif not getattr(config, "auto_map", None):
        return Refusal(model_type, "AutoModelForCausalLM has no class for it in the installed transformers")
    return None


def check_supported(config) -> None:
    """Raise a one-line :class:`~qpruning.errors.ConfigError` naming what a model with ``config`` lacks."""
    found = refusal(config)
    if found is not None:
        raise found.error()


def check_model(model) -> None:
    """The check of :func:`check_supported` that needs the model's class, on a loaded model (remote code, or a
    class the configuration does not map to)."""
    if not getattr(type(model), "_supports_attention_backend", False):
        model_type = getattr(model.config, "model_type", "unknown")
        raise Refusal(model_type, f"{type(model).__name__}'s attention does not go through transformers' attention "
                                  "interface (_supports_attention_backend is not set)").error()
