"""``compat``: which definition of each method a run computes.

- ``methods`` (the default): every pruner and quantizer as its own paper (and reference code) defines it.
- ``paper``: what the code of the paper under study computed (GitHub ``zhzihao/QPruningKV``, a KVCache-Factory
  fork; docs/fidelity.md lists every difference): keys and values repeated to the query heads before selection
  (every query head keeps its own tokens and the cache holds ``q_heads`` rows), H2O's mask (non-causal except the
  last window block), PyramidKV's integer steps, "KIVI" / "FlexGen" as transformers' HQQ quantized cache computes
  them, and the windows its scripts used for each benchmark (:func:`paper_window`, :func:`paper_sinks`).

Ada-KV and HeadKV are not in that code: ``compat=paper`` refuses them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from qpruning.cache.budget import LayerOverride
from qpruning.cache.hqq_cache import paper_quantizer
from qpruning.cache.quantizers import KVQuantizer
from qpruning.errors import ConfigError, check_choice
from qpruning.pruners.base import Pruner
from qpruning.pruners.paper import PAPER_CLASSES

COMPAT_MODES = ("methods", "paper")
# What compat=paper runs: the pruners with a paper class (qpruning/pruners/paper.py), and none.
PAPER_PRUNERS: tuple[str, ...] = ("none", *(cls.name for cls in PAPER_CLASSES))

# The windows of the paper's scripts (run_needle_in_haystack.py; run_longbench.py and run_ruler.py alike).
# StreamingLLM on LongBench / RULER: 4 first tokens + the (budget - 4) most recent, i.e. sinks=4 (window 0: the
# recent tokens are kept by recency anyway); on NIAH: the last 32 and the rest of the budget from the start.
PAPER_WINDOWS: dict[str, dict[str, int]] = {
    "niah": {"snapkv": 32, "h2o": 32, "pyramidkv": 8, "streamingllm": 32},
    "longbench": {"snapkv": 8, "h2o": 8, "pyramidkv": 8, "streamingllm": 0},
    "ruler": {"snapkv": 8, "h2o": 8, "pyramidkv": 8, "streamingllm": 0},
}
PAPER_SINKS: dict[str, int] = {"longbench": 4, "ruler": 4}


def mode_classes(
    compat: str, pruner: Pruner, quantizer: KVQuantizer, layers: Sequence[LayerOverride] = ()
) -> tuple[Pruner, KVQuantizer]:
    """The pruner and quantizer a run of mode ``compat`` computes with, chosen once: the configured ones for
    ``methods``; for ``paper``, their counterparts in the paper's code (:func:`paper_pruner`, and the HQQ cache of
    its scripts: :func:`~qpruning.cache.hqq_cache.paper_quantizer`), after refusing what that code never ran."""
    check_choice("compat", compat, COMPAT_MODES)
    if compat == "methods":
        return pruner, quantizer
    if pruner.name not in PAPER_PRUNERS:
        raise ConfigError(f"pruner={pruner.name} is not in the paper's code, so compat=paper cannot run it",
                          f"allowed with compat=paper: {', '.join(PAPER_PRUNERS)}; or compat=methods")
    if quantizer.tier_plan:
        raise ConfigError("quant.tiers has no compat=paper counterpart (the paper's code stored one precision)",
                          "allowed with compat=paper: quant.tiers=null; or compat=methods")
    if any(o.rotate for o in layers):
        raise ConfigError("layers: rotate=true has no compat=paper counterpart (the paper's code never rotated)",
                          "allowed with compat=paper: rotate=false or left out; or compat=methods")
    return paper_pruner(pruner), paper_quantizer(quantizer)


def check_sliding_model(compat: str, layers: str) -> None:
    """Refuse a model with sliding-window ``layers`` (their ranges) in a mode that cannot run one."""
    if compat == "paper":
        raise ConfigError(
            f"compat=paper reproduces the paper's code, which ran full-attention models only; this model has "
            f"sliding-window layers ({layers})", "allowed: compat=methods for this model",
        )


def paper_pruner(pruner: Pruner) -> Pruner:
    """The ``compat=paper`` counterpart of a configured pruner (:mod:`qpruning.pruners.paper`), with the same
    parameters: chosen once, as :func:`~qpruning.cache.hqq_cache.paper_quantizer` swaps the quantizer. A pruner
    that is already one, or that keeps every token, is returned as it is."""
    paper = PAPER_CLASSES.get(type(pruner))
    if paper is None:
        return pruner
    return paper(**{f.name: getattr(pruner, f.name) for f in dataclasses.fields(pruner)
                    if f.init and f.compare})


def paper_family(benchmark: str) -> str | None:
    """The paper script a benchmark (or one of its variants: ``niah_small``, ``ruler_8k``) ran under, if any."""
    return next((family for family in PAPER_WINDOWS if str(benchmark).startswith(family)), None)


def _default(pruner: str, name: str):
    from qpruning.pruners import PRUNERS

    cls = PRUNERS.get(pruner)
    if cls is None:
        return None
    return next((f.default for f in dataclasses.fields(cls) if f.name == name), None)


def paper_window(pruner: str, benchmark: str) -> int | None:
    """The window the paper's script for ``benchmark`` gave ``pruner`` (the pruner's own default elsewhere)."""
    family = paper_family(benchmark)
    window = PAPER_WINDOWS.get(family, {}).get(pruner) if family else None
    return _default(pruner, "window") if window is None else window


def paper_sinks(pruner: str, benchmark: str) -> int | None:
    """StreamingLLM's sink tokens in the paper's script for ``benchmark`` (``None``: the rest of the budget from
    the start of the prompt, the NIAH script's; and for every other pruner)."""
    if pruner != "streamingllm":
        return None
    return PAPER_SINKS.get(paper_family(benchmark) or "")
