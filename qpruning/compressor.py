"""Quantized pruning: prune the KV cache at the end of prefill, then quantize what is kept.

The paper's method (Sec. 4): a pruner keeps ``tokens`` per layer and head, chosen on full-precision keys and
queries, and a quantizer stores them at ``bits``; under a memory budget, fewer bits buy more tokens.

Usage, from plain Python::

    from qpruning import KVCompressor, SnapKV, KIVI, cache_kwargs
    compressor = KVCompressor(pruner=SnapKV(), quantizer=KIVI(bits=4), budget=1 / 64)
    with compressor.attach(model):
        cache = compressor.new_cache(model)
        out = model.generate(**inputs, **cache_kwargs(model, cache), max_new_tokens=32)
    print(cache.summary())          # bytes held now, measured; kept tokens
    print(cache.prefill_result())   # what prefill left: each layer's kept tokens, bytes, ratio

``attach`` adds a forward pre-hook to the model's decoder and switches that model's attention to qpruning's
wrapper (:mod:`qpruning.attention`) for the duration of the ``with`` block; both are undone on exit. Inside it,
a forward without a cache (or with an empty ``DynamicCache``, which is what ``generate`` makes) gets a fresh
:class:`~qpruning.cache.QPrunedCache` (``attach`` yields an :class:`Attached` whose ``last_cache`` is the latest
forward's cache).

Each layer's compression is returned, not written elsewhere: :meth:`KVCompressor.compress_layer` returns what the
layer holds afterwards (:class:`~qpruning.cache.layer.LayerPrefill`, recorded by the layer itself), and
:meth:`QPrunedCache.prefill_result` gathers the layers' records.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch

from qpruning import attention
from qpruning.architectures import check_model, check_supported, sliding_windows, text_config
from qpruning.attention import LayerCapture
from qpruning.backends import Backend, reference_attention
from qpruning.cache.budget import (
    BUDGET_MODES,
    SIXTEEN_BIT_BYTES,
    SLIDING_MODES,
    LayerOverride,
    LayerPlan,
    check_disjoint,
    expected_outlier_bytes,
    row_bytes,
    tokens_for_budget,
)
from qpruning.cache.cache import QPrunedCache
from qpruning.cache.context import reset_active_forward, set_active_forward
from qpruning.cache.layer import CompressedLayer, LayerPrefill
from qpruning.cache.quantizers import KIVI, KVQuantizer
from qpruning.cache.rope import check_rope_config, key_rotaries
from qpruning.cache.tiers import split_tiers
from qpruning.compat import check_sliding_model, mode_classes
from qpruning.errors import ConfigError, check_choice, check_int, check_real
from qpruning.pruners.base import NoPruner, Pruner
from qpruning.transformers_api import cache_argument, forward_cache, set_forward_cache

logger = logging.getLogger(__name__)

SIXTEEN_BIT = (torch.float16, torch.bfloat16)
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelGeometry:
    """What the compressor needs to know of a model, read from its config."""

    model_type: str
    num_layers: int
    kv_heads: int
    q_heads: int
    head_dim: int
    context_window: int
    sliding_layers: tuple[int, ...] = ()
    sliding_window: int | None = None  # the window of the sliding layers (counting the current token)

    @classmethod
    def from_config(cls, config) -> ModelGeometry:
        windows = sliding_windows(config)
        config = text_config(config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            model_type=getattr(config, "model_type", "unknown"),
            num_layers=config.num_hidden_layers,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            q_heads=config.num_attention_heads,
            head_dim=head_dim,
            context_window=getattr(config, "max_position_embeddings", 0) or 0,
            sliding_layers=tuple(sorted(windows)),
            sliding_window=next(iter(windows.values()), None),
        )

    @property
    def global_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if i not in set(self.sliding_layers))


@functools.lru_cache(maxsize=16)
def _log_once(message: str) -> None:
    logger.info(message)


def _ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for layer in layers:
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


@dataclass
class Attached:
    """What ``KVCompressor.attach`` yields: the compressor, and the cache of the latest compressed forward
    (``last_cache``: the one ``generate`` made when it was handed none)."""

    compressor: KVCompressor
    _last_cache: QPrunedCache | None = field(default=None, repr=False)

    @property
    def last_cache(self) -> QPrunedCache | None:
        return self._last_cache

    def saw(self, cache: QPrunedCache) -> None:
        """Record ``cache`` as the latest forward's cache."""
        self._last_cache = cache


@dataclass
class KVCompressor:
    """A pruner, a quantizer and a memory budget: the configuration of one quantized-pruning run.

    Args:
        pruner: which tokens to keep (:mod:`qpruning.pruners`).
        quantizer: how to store them (:mod:`qpruning.cache.quantizers`); its ``bits`` is the precision.
        tokens: kept tokens per layer and KV head (the mean when layers differ). Exactly one of ``tokens`` and
            ``budget`` for a pruner that prunes; neither for ``NoPruner``.
        budget: the fraction of the full 16-bit cache to spend (e.g. 1/64).
        budget_mode: ``nominal`` (the paper's accounting) or ``exact`` (scales, zeros, outliers counted).
        full_cache_tokens: the full cache of the budget fraction, in tokens (default: the model's context window).
        layers: layer-wise overrides of bits (and tokens), e.g. ``[LayerOverride("8-15", bits=16)]``.
        storage_dtype: the 16-bit dtype of what is not quantized (kept tokens at ``bits=16``, partial groups,
            the residual window), and of scales and zeros; default the model's dtype when it is 16-bit, else
            float16. ``model`` keeps the model's dtype even when it is float32 (for exact comparisons in tests).
            A layer that ends up uncompressed keeps the model's own tensors.
        kernel: ``auto`` (fused Triton decode attention on CUDA when available), ``off``, or ``on``.
        compat: ``methods`` (each method as its own paper defines it) or ``paper`` (what the code of the paper
            under study computed: selection per query head with the cache holding ``q_heads`` rows, H2O's
            non-causal mask, PyramidKV's integer steps, transformers' HQQ cache for the quantizers; see
            docs/fidelity.md).
        sliding: what the sliding-window layers of a hybrid model (Gemma 2/3, gpt-oss) hold: ``keep`` (the
            model's own sliding-window cache layer, its dtype) or ``quantize`` (the window stored with the run's
            quantizer). Either way they hold at most their window and are not pruned; ``tokens`` and ``budget``
            apply to the global layers (``budget``: a fraction of the global layers' full cache). With
            ``budget_mode=exact`` the sliding layers' bytes (their full window) are counted against the budget
            too, so that everything held fits it (docs/models.md).
    """

    pruner: Pruner = field(default_factory=NoPruner)
    quantizer: KVQuantizer = field(default_factory=lambda: KIVI(bits=16))
    tokens: int | None = None
    budget: float | None = None
    budget_mode: str = "nominal"
    full_cache_tokens: int | None = None
    layers: list[LayerOverride] = field(default_factory=list)
    storage_dtype: str | None = None
    kernel: str = "auto"
    every_layer: bool = False  # the overrides must configure every layer (an allocation file does)
    compat: str = "methods"
    sliding: str = "keep"

    def __post_init__(self) -> None:
        check_choice("sliding", self.sliding, SLIDING_MODES)
        if not isinstance(self.layers, (list, tuple)):
            raise ConfigError(f"layers={self.layers!r} is not a list", 'allowed: e.g. [{layers: "8-15", bits: 16}]')
        self.layers = [LayerOverride.from_mapping(o) for o in self.layers]
        check_disjoint(self.layers)
        # the classes of the compat mode, chosen once (compat=paper: the paper's pruners and its HQQ cache)
        self.pruner, self.quantizer = mode_classes(self.compat, self.pruner, self.quantizer, self.layers)
        check_choice("budget_mode", self.budget_mode, BUDGET_MODES)
        check_choice("storage_dtype", self.storage_dtype, (*STORAGE_DTYPES, "model"), optional=True)
        check_choice("kernel", self.kernel, ("auto", "on", "off"))
        check_int("tokens", self.tokens, minimum=1, optional=True, meaning="kept tokens per layer and head")
        check_real("budget", self.budget, low=0.0, high=1.0, optional=True,
                   allowed="allowed: a fraction in (0, 1] of the full 16-bit cache (e.g. 0.015625 for 1/64), or null")
        check_int("full_cache_tokens", self.full_cache_tokens, minimum=1, optional=True,
                  meaning="null: the model's context window")
        if self.pruner.prunes:
            if (self.tokens is None) == (self.budget is None):
                raise ConfigError(
                    f"pruner={self.pruner.name} needs exactly one of tokens or budget, "
                    f"got tokens={self.tokens} and budget={self.budget}",
                    "allowed: tokens (kept tokens per layer, e.g. 512) or budget (a fraction of the full 16-bit "
                    "cache, e.g. 0.015625 for 1/64), not both",
                )
        elif self.tokens is not None or self.budget is not None:
            logger.warning("pruner=none keeps every token: tokens/budget are ignored")
            self.tokens = self.budget = None
        if self.quantizer.tier_plan:
            self._check_tiers()
        if any(o.tokens is None for o in self.layers) and self.budget is None and self.pruner.prunes:
            raise ConfigError("layers: an override without tokens needs budget= to derive its tokens from its bits",
                              "allowed: give each override its tokens, or use budget= instead of tokens=")

    def _check_tiers(self) -> None:
        """Refuse what precision per token (``quant.tiers``) cannot run with."""
        if not self.pruner.prunes:
            raise ConfigError(
                "quant.tiers ranks the kept tokens by the pruner's scores, and pruner=none scores none",
                "allowed: quant.tiers with a pruner (e.g. pruner=snapkv), or quant.tiers=null",
            )
        if self.layers:
            raise ConfigError(
                "quant.tiers sets the precision of every global layer's kept tokens, so layers=/allocation= "
                "(bits per layer) cannot be used with it",
                "allowed: quant.tiers or layer-wise bits, not both",
            )

    # -- planning and validation --------------------------------------------------------------------------

    def plan(self, config) -> list[LayerPlan]:
        """Bits and kept tokens for every layer of a model with ``config``; raises on anything invalid.

        Cheap (reads the config only), so runs call it before loading any weights.
        """
        if not isinstance(config, ModelGeometry):
            check_supported(config)  # by capability: one line naming what the model lacks
            if self.quantizer.keys_pre_rope:
                check_rope_config(config)  # RoPE this package can remove and re-apply
        geometry = config if isinstance(config, ModelGeometry) else ModelGeometry.from_config(config)
        if geometry.q_heads % geometry.kv_heads:
            raise ConfigError(f"{geometry.q_heads} query heads are not a multiple of {geometry.kv_heads} KV heads",
                              "allowed: a model with grouped-query attention of whole groups")
        sliding = set(geometry.sliding_layers)
        if sliding:
            self._check_sliding(geometry)
        # pruners with per-head data (HeadKV's scores) check it against the model
        self.pruner.validate_geometry(geometry.num_layers, geometry.q_heads, geometry.kv_heads)
        bits_per_layer = [self.quantizer.bits] * geometry.num_layers
        rotate_per_layer = [self.quantizer.rotate] * geometry.num_layers
        tokens_per_layer: list[int | None] = [self.tokens] * geometry.num_layers
        for override in self.layers:
            first, last = override.range()
            if last >= geometry.num_layers:
                raise ConfigError(
                    f"layers: the range {override.layers!r} goes past the model's {geometry.num_layers} layers",
                    f"allowed: layers 0-{geometry.num_layers - 1}",
                )
            if self.sliding == "keep" and sliding.intersection(range(first, last + 1)):
                raise ConfigError(
                    f"layers: the range {override.layers!r} includes sliding-window layer(s) "
                    f"{_ranges(sorted(sliding.intersection(range(first, last + 1))))}, which sliding=keep holds as the "
                    "model does (16-bit)",
                    f"allowed: ranges of global layers ({_ranges(list(geometry.global_layers))}), or sliding=quantize",
                )
            if override.tokens is not None and sliding.intersection(range(first, last + 1)):
                raise ConfigError(
                    f"layers: the range {override.layers!r} gives tokens to sliding-window layer(s), which hold their "
                    "window whatever the budget",
                    f"allowed: tokens on global layers ({_ranges(list(geometry.global_layers))}) only",
                )
            for layer in range(first, last + 1):
                bits_per_layer[layer] = override.bits
                if override.rotate is not None:
                    rotate_per_layer[layer] = override.rotate
                if override.tokens is not None:
                    tokens_per_layer[layer] = override.tokens
        if self.every_layer:
            covered = {layer for o in self.layers for layer in range(o.range()[0], o.range()[1] + 1)}
            missing = [layer for layer in range(geometry.num_layers) if layer not in covered]
            if missing:
                raise ConfigError(
                    f"the layer allocation leaves layer(s) {_ranges(missing)} of the model's "
                    f"{geometry.num_layers} layers unconfigured",
                    f"allowed: an allocation that covers layers 0-{geometry.num_layers - 1} (made for this model)",
                )
        full_tokens = self.full_cache_tokens or geometry.context_window
        budget = self._global_budget(geometry, bits_per_layer, full_tokens)
        plans = []
        for layer, bits in enumerate(bits_per_layer):
            rotate = rotate_per_layer[layer]
            quantizer = self.layer_quantizer(LayerPlan(bits=bits, tokens=None, rotate=rotate))
            quantizer.validate_head_dim(geometry.head_dim)
            if layer in sliding:
                keep = self.sliding == "keep"
                plans.append(LayerPlan(bits=16 if keep else bits, tokens=None, rotate=False if keep else rotate,
                                       window=geometry.sliding_window, sliding=self.sliding))
                continue
            tokens = tokens_per_layer[layer]
            if budget is not None and not any(  # (budget is None exactly when self.budget is)
                o.tokens is not None and o.range()[0] <= layer <= o.range()[1] for o in self.layers
            ):
                if not full_tokens:
                    raise ConfigError("budget= needs full_cache_tokens (the model config has no context window)",
                                      "allowed: full_cache_tokens=N, or tokens= instead of budget=")
                tokens = tokens_for_budget(budget, full_tokens, bits, self.quantizer, geometry.head_dim, self.budget_mode)
            if not self.pruner.prunes:
                tokens = None
            elif tokens is not None and tokens < self.pruner.min_tokens():
                raise ConfigError(
                    f"layer {layer} keeps {tokens} tokens, fewer than {self.pruner.name}'s window of "
                    f"{self.pruner.window} tokens that are always kept",
                    "allowed: a larger tokens/budget, or a smaller pruner.window",
                )
            plans.append(LayerPlan(bits=bits, tokens=tokens, rotate=rotate))
        return plans

    def _check_sliding(self, geometry: ModelGeometry) -> None:
        """Refuse what a model with sliding-window layers cannot run."""
        check_sliding_model(self.compat, _ranges(list(geometry.sliding_layers)))
        if self.sliding == "keep" and not geometry.global_layers and (self.pruner.prunes or self.quantizer.enabled):
            raise ConfigError(
                f"every layer of this model is a sliding-window layer (window {geometry.sliding_window}): "
                "sliding=keep leaves nothing to compress",
                "allowed: sliding=quantize (the windows stored with the quantizer), or a model with global layers",
            )

    def _global_budget(self, geometry: ModelGeometry, bits_per_layer: list[int], full_tokens: int) -> float | None:
        """The budget fraction each global layer spends: the budget itself, or, with ``budget_mode=exact`` on a
        model with sliding-window layers, what is left once the sliding layers' full windows are paid for (the
        whole cache then fits ``budget`` times the global layers' full 16-bit cache)."""
        if self.budget is None or self.budget_mode != "exact" or not geometry.sliding_layers or not full_tokens:
            return self.budget
        if geometry.sliding_window is None:  # from_config gives sliding layers a window
            raise ValueError(f"{geometry.model_type}: sliding-window layers without a window")
        window = geometry.sliding_window - 1
        sliding_bytes = 0.0
        for layer in geometry.sliding_layers:
            bits = 16 if self.sliding == "keep" else bits_per_layer[layer]
            sliding_bytes += row_bytes(window, bits, self.quantizer, geometry.head_dim)
            sliding_bytes += expected_outlier_bytes(window, bits, self.quantizer, geometry.head_dim)
        full_row = 2 * full_tokens * geometry.head_dim * SIXTEEN_BIT_BYTES
        globals_ = len(geometry.global_layers)
        left = self.budget - sliding_bytes / (full_row * globals_) if globals_ else 0.0
        if left <= 0:
            raise ConfigError(
                f"budget={self.budget} with budget_mode=exact: the sliding-window layers' windows alone take "
                f"{sliding_bytes / (full_row * max(globals_, 1)):.4g} of the global layers' full cache",
                "allowed: a larger budget, budget_mode=nominal (the budget for the global layers alone), or "
                "sliding=quantize",
            )
        return left

    def layer_quantizer(self, plan: LayerPlan) -> KVQuantizer:
        """The quantizer of a layer with ``plan``: the configured one at the plan's bits and rotation."""
        quantizer = self.quantizer.with_bits(plan.bits)
        return quantizer if plan.rotate == quantizer.rotate else quantizer.with_rotate(plan.rotate)

    def describe(self) -> str:
        budget = f"tokens={self.tokens}" if self.tokens is not None else f"budget={self.budget}"
        return f"{self.pruner.describe()} + {self.quantizer.describe()} ({budget}, {self.budget_mode})"

    # -- runtime ------------------------------------------------------------------------------------------

    def new_cache(self, model) -> QPrunedCache:
        """An empty compressed cache for ``model`` (validated against its config)."""
        cache = QPrunedCache(model.config.num_hidden_layers, plans=self.plan(model.config))
        if self.quantizer.keys_pre_rope:
            cache.use_rotaries(key_rotaries(model))
        return cache

    @contextlib.contextmanager
    def attach(self, model, context: Callable[[QPrunedCache], object] | None = None) -> Iterator[Attached]:
        """Within the block, ``model`` compresses its cache with this compressor (see the module docstring).

        Yields an :class:`Attached` (``.last_cache``: the latest forward's cache). ``context`` makes each
        forward's context from its cache instead of :class:`attention.ForwardContext` (``qpruning.prefill``
        records the prefill's tensors this way, to compress them later)."""
        make_context = context or functools.partial(attention.ForwardContext, self)
        plans = self.plan(model.config)
        check_model(model)
        rotaries = key_rotaries(model) if self.quantizer.keys_pre_rope else None
        if rotaries is not None and self.kernel != "off":
            _log_once(f"quant={self.quantizer.name}: keys are stored before RoPE and read through dequantization (RoPE "
                      "re-applied), so compressed layers run the PyTorch reference attention, not the fused kernel")
        config = model.config
        previous = config._attn_implementation
        name = attention.register(previous)
        decoder = model.get_decoder()
        # The name the installed transformers gives the cache argument of the decoder's forward.
        cache_name = cache_argument(decoder)
        attached = Attached(self)
        # One context-variable token per forward in progress (nested forwards stack), reset by ``after``.
        context_tokens: list = []

        def before(module, args, kwargs):
            cache = forward_cache(kwargs, cache_name)
            use_cache = kwargs.get("use_cache")
            if use_cache is None:
                use_cache = getattr(config, "use_cache", True)
            if cache is None or (not isinstance(cache, QPrunedCache) and cache.get_seq_length() == 0):
                if not use_cache:
                    context_tokens.append(set_active_forward(None))
                    return args, kwargs
                cache = QPrunedCache(config.num_hidden_layers, plans=plans)
                set_forward_cache(kwargs, cache_name, cache)
            elif not isinstance(cache, QPrunedCache):
                raise TypeError(
                    f"A {type(cache).__name__} that already holds tokens cannot be compressed; start from an empty "
                    "cache or compressor.new_cache(model)"
                )
            cache.use_plans(plans)
            if rotaries is not None:
                cache.use_rotaries(rotaries)
            cache.record_attention_mask(kwargs.get("attention_mask"))
            context_tokens.append(set_active_forward(make_context(cache)))
            attached.saw(cache)
            return args, kwargs

        def after(module, args, kwargs, output):
            reset_active_forward(context_tokens.pop())
            return output

        handles = [
            decoder.register_forward_pre_hook(before, with_kwargs=True),
            decoder.register_forward_hook(after, with_kwargs=True, always_call=True),
        ]
        config._attn_implementation = name
        try:
            yield attached
        finally:
            config._attn_implementation = previous
            for handle in handles:
                handle.remove()

    def storage_dtype_for(self, dtype: torch.dtype) -> torch.dtype:
        if self.storage_dtype == "model":
            return dtype
        if self.storage_dtype is not None:
            return STORAGE_DTYPES[self.storage_dtype]
        return dtype if dtype in SIXTEEN_BIT else torch.float16

    def layer_tokens(
        self, plans: Sequence[LayerPlan], seq_len: int, statistics: Sequence[float | None] | None = None
    ) -> Sequence[int | None]:
        """Kept tokens of every layer for a prompt of ``seq_len`` tokens (``None``: every token): the plans'
        tokens as this pruner spreads them (:meth:`Pruner.layer_tokens`). Compute once per prompt.

        ``statistics``: one per layer (:meth:`layer_statistics`), for a pruner that :attr:`needs_every_layer`."""
        if self.pruner.prunes:
            # the pruner spreads the global layers' tokens among them (PyramidKV's pyramid); sliding layers hold
            # their window
            global_layers = [i for i, p in enumerate(plans) if p.window is None]
            # a pruning plan holds the tokens of every global layer (plan() refuses one without)
            planned = cast("list[int]", [plans[i].tokens for i in global_layers])
            if statistics is None:
                spread_tokens = self.pruner.layer_tokens(planned, seq_len)
            else:
                spread_by = [float(cast("float", statistics[i])) for i in global_layers]
                spread_tokens = self.pruner.layer_tokens(planned, seq_len, spread_by)
            out: list[int | None] = [None] * len(plans)
            for i, tokens in zip(global_layers, spread_tokens):
                out[i] = tokens
            return out
        return [None] * len(plans)

    @property
    def needs_every_layer(self) -> bool:
        """Whether the layers are compressed together once the last one's prefill is done
        (:attr:`Pruner.needs_every_layer`: layer budgets from every layer's statistic) rather than one by one."""
        return self.pruner.prunes and self.pruner.needs_every_layer

    def layer_statistics(self, cache: QPrunedCache, captures: Mapping[int, LayerCapture]) -> list[float | None]:
        """Each layer's :meth:`Pruner.layer_statistic` from what its prefill was given (``None``: a layer not
        captured, or a sliding-window layer, which the pruner does not spread tokens over)."""
        out: list[float | None] = [None] * len(cache.layers)
        for index, capture in captures.items():
            if cache.plans[index].window is None:
                key_valid = self._key_valid(cache, capture.key.shape[2])
                out[index] = self.pruner.layer_statistic(capture.query(), capture.key, key_valid, capture.scaling)
        return out

    def compress_layers(self, cache: QPrunedCache, captures: Mapping[int, LayerCapture]) -> dict[int, LayerPrefill]:
        """Compress the captured layers together (a pruner that :attr:`needs_every_layer`): their statistics, the
        kept tokens spread by them (:meth:`layer_tokens`), then each layer as :meth:`compress_layer` does. Returns
        what each layer holds afterwards."""
        if not captures:
            return {}
        seq_len = next(iter(captures.values())).key.shape[2]
        tokens = self.layer_tokens(cache.plans, seq_len, self.layer_statistics(cache, captures))
        return {
            index: self.compress_layer(cache, index, c.query(), c.key, c.value, c.scaling, layer_tokens=tokens)
            for index, c in sorted(captures.items())
        }

    def compress_layer(
        self, cache: QPrunedCache, layer_idx: int, query, key, value, scaling: float,
        layer_tokens: Sequence[int | None] | None = None,
    ) -> LayerPrefill:
        """Prune and quantize one layer at the end of prefill, from its full-precision queries and keys.

        ``layer_tokens`` is :meth:`layer_tokens` for this prompt (computed here when not given). Returns what the
        layer holds afterwards (also recorded by the layer: :meth:`QPrunedCache.prefill_result` gathers them).
        """
        if layer_tokens is None:
            layer_tokens = self.layer_tokens(cache.plans, key.shape[2])
        result = self._compress_layer(cache, layer_idx, query, key, scaling, layer_tokens[layer_idx])
        if layer_idx == len(cache.layers) - 1 and logger.isEnabledFor(logging.DEBUG):
            summary = cache.prefill_summary
            if summary is not None:
                logger.debug(
                    "compressed %d tokens: %.1f kept per layer and head, %d bytes (%.3f of 16-bit)",
                    key.shape[2], summary["kept_tokens"], summary["kv_bytes"], summary["kv_ratio"],
                )
        return result

    def _compress_layer(
        self, cache: QPrunedCache, layer_idx: int, query, key, scaling: float, tokens: int | None
    ) -> LayerPrefill:
        layer = cache.layers[layer_idx]
        if not isinstance(layer, CompressedLayer):  # sliding=keep: the model's own sliding-window layer
            return layer.finish_prefill()  # it already holds its window
        key_valid = self._key_valid(cache, key.shape[2])
        pruner = self.pruner
        repeat = pruner.cache_rows(query.shape[1], key.shape[1]) // key.shape[1]
        if repeat != 1:
            # compat=paper's pruners repeat the KV heads to the query heads before selecting: every query head
            # keeps its own tokens and the cache holds q_heads rows (the decode attention then has groups of one).
            layer.repeat_heads(repeat)
            key = key.repeat_interleave(repeat, dim=1)
        batch, heads, seq, _ = key.shape
        plan = cache.plans[layer_idx]
        bits = plan.bits
        order = scores = None
        longest = seq if key_valid is None else int(key_valid.sum(-1).max())
        if plan.window is not None:
            # a quantized sliding-window layer keeps what the model's own keeps: the last window - 1 positions
            keep = torch.zeros(batch, heads, seq, dtype=torch.bool, device=key.device)
            keep[..., max(seq - plan.window + 1, 0):] = True
            if key_valid is not None:
                keep &= key_valid.unsqueeze(1)
        elif tokens is None or pruner.keeps_all(tokens, longest):
            if bits == 16 and key_valid is None and pruner.keeps_uncut_layers and not self.quantizer.tier_plan:
                # nothing to remove, nothing to quantize: the layer stays exactly as the model made it
                return layer.finish_prefill(tokens)
            keep = torch.ones(batch, heads, seq, dtype=torch.bool, device=key.device)
            if key_valid is not None:
                keep &= key_valid.unsqueeze(1)
        else:
            selection = pruner.choose(query, key, key_valid, scaling, tokens, layer_idx)
            keep, order, scores = selection.keep, selection.order, selection.scores
        quantizer = self.layer_quantizer(plan)
        tiers = None
        if self.quantizer.tier_plan and plan.window is None:
            # precision per token: the kept tokens ranked by the pruner's scores, a quantizer per tier
            if scores is None:
                scores = pruner.score(query, key, key_valid, scaling)
            scores = scores.float().clone()
            scores[..., max(seq - pruner.window, 0):] = torch.inf  # the always-kept window: the first tier
            masks = split_tiers(keep, scores, self.quantizer.tier_plan)
            tiers = [(mask, quantizer.untiered(tier.bits)) for mask, tier in zip(masks, self.quantizer.tier_plan)]
        rotary = None
        if quantizer.keys_pre_rope:
            if cache.rotaries is None:
                raise RuntimeError(
                    f"quant={quantizer.name} quantizes keys before RoPE and needs the model's: make the cache with "
                    "compressor.new_cache(model), or let compressor.attach(model) make it"
                )
            rotary = cache.rotaries[layer_idx]
        return layer.compress(
            keep, quantizer, self.storage_dtype_for(key.dtype), self.backend_for(key, bits), tokens,
            order=order, tiers=tiers, rotary=rotary, position_offset=cache.position_offset(),
        )

    @staticmethod
    def _key_valid(cache: QPrunedCache, seq: int) -> torch.Tensor | None:
        """The cache's real-token mask for a layer of ``seq`` tokens (its last ``seq`` positions)."""
        key_valid = cache.key_valid
        if key_valid is not None and key_valid.shape[-1] != seq:
            key_valid = key_valid[:, -seq:]
        return key_valid

    def backend_for(self, key: torch.Tensor, bits: int | None = None) -> Backend:
        """The attention a layer with these keys runs after compression (:mod:`qpruning.backends`): the fused
        Triton kernel on CUDA with Triton (``auto`` or ``on``), or on the CPU under Triton's interpreter when asked
        for explicitly (``on`` with ``TRITON_INTERPRET=1``); the PyTorch reference otherwise, and always for a layer
        quantized at ``bits`` < 16 by ``compat=paper``'s HQQ cache (default ``bits``: the quantizer's)."""
        bits = self.quantizer.bits if bits is None else bits
        if self.kernel == "off" or self.quantizer.needs_reference_attention(bits):
            # e.g. compat=paper's HQQ-cache codes, read by the reference path only (dequantized through hqq)
            return reference_attention
        from qpruning.backends import triton

        if key.is_cuda:
            usable = triton.available()
        else:
            usable = self.kernel == "on" and triton.interpreting() and triton.triton_installed()
        if self.kernel == "on" and not usable:
            raise RuntimeError(
                "kernel=on needs Triton and a CUDA device (pip install -e .[gpu]), or TRITON_INTERPRET=1 on a CPU; "
                "use kernel=auto to fall back to the PyTorch path"
            )
        return triton.fused_attention if usable else reference_attention

