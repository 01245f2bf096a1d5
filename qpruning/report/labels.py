"""Names, orders and display labels shared by the report's tables and figures.

Run folders use the short names that users type (``snapkv``, ``llama3_8b_instruct``, ``bits=4``); the report
shows the paper's spelling (``SnapKV``, ``Llama-3-8B-Instruct``, ``4x tokens, 4-bit``) and sorts in the paper's
order. Unknown names fall through unchanged, so a new pruner or model shows up instead of being dropped.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

PRUNER_ORDER: tuple[str, ...] = (
    "none", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv", "tova", "knorm", "chunkkv", "cake",
)
PRUNER_LABELS: dict[str, str] = {
    "none": "No pruning",
    "streamingllm": "StreamingLLM",
    "h2o": "H2O",
    "snapkv": "SnapKV",
    "pyramidkv": "PyramidKV",
    "adakv": "Ada-KV",
    "headkv": "HeadKV",
    "tova": "TOVA",
    "knorm": "KNorm",
    "chunkkv": "ChunkKV",
    "cake": "CAKE",
}
QUANT_ORDER: tuple[str, ...] = (
    "flexgen",
    "flexgen_outlier",
    "flexgen_rot",
    "kivi",
    "kivi_outlier",
    "kivi_rot",
    "kvquant",
    "hqq",
)
QUANT_LABELS: dict[str, str] = {
    "flexgen": "FlexGen",
    "flexgen_outlier": "FlexGen+Outlier 1%",
    "kivi": "KIVI",
    "kivi_outlier": "KIVI+Outlier 1%",
    "kvquant": "KVQuant-style",
    "hqq": "HQQ",
    "none": "none",
}
PAPER_QUANTS: tuple[str, ...] = ("flexgen", "flexgen_outlier", "kivi", "kivi_outlier", "hqq")
"""The quantizers the paper studies (HQQ: its code's cache); the ``quantizers`` table compares the others with KIVI."""
ROTATED_SUFFIX = "_rot"
"""A quantizer ``X_rot`` is ``X`` applied after a rotation of the keys and values (``kivi_rot``, ``flexgen_rot``)."""
MODEL_LABELS: dict[str, str] = {
    "smollm2_135m": "SmolLM2-135M",
    "gemma3_270m": "Gemma-3-270M",
    "llama3_8b_instruct": "Llama-3-8B-Instruct",
    "llama3_8b": "Llama-3-8B",
    "llama3_8b_base": "Llama-3-8B-Base",
    "llama3_70b": "Llama-3-70B",
    "llama3_70b_instruct": "Llama-3-70B-Instruct",
    "llama3_70b_base": "Llama-3-70B-Base",
    "llama32_1b": "Llama-3.2-1B",
    "llama32_1b_instruct": "Llama-3.2-1B-Instruct",
    "llama32_1b_base": "Llama-3.2-1B-Base",
    "llama32_3b": "Llama-3.2-3B",
    "llama32_3b_instruct": "Llama-3.2-3B-Instruct",
    "llama32_3b_base": "Llama-3.2-3B-Base",
    "mistral_7b_instruct_v02": "Mistral-7B-Instruct-v0.2",
}
MAIN_MODELS: tuple[str, ...] = ("llama3_8b_instruct", "mistral_7b_instruct_v02")
"""The paper's two main models, listed first in tables (other models follow by size)."""
BENCHMARK_FAMILIES: tuple[str, ...] = ("longbench_e", "longbench", "niah", "ruler", "crossentropy")
BENCHMARK_LABELS: dict[str, str] = {
    "longbench": "LongBench",
    "longbench_e": "LongBench-E",
    "niah": "NIAH",
    "ruler": "RULER",
    "crossentropy": "Cross-entropy",
}
CATEGORY_ORDER: tuple[str, ...] = (
    "single_doc_qa",
    "multi_doc_qa",
    "summarization",
    "few_shot",
    "synthetic",
    "code",
)
CATEGORY_LABELS: dict[str, str] = {
    "single_doc_qa": "SQA",
    "multi_doc_qa": "MQA",
    "summarization": "SUMM",
    "few_shot": "Fewshot",
    "synthetic": "Syn.",
    "code": "Code",
}
LENGTH_BUCKETS: tuple[str, ...] = ("0-4k", "4-8k", "8k+")
DEFAULT_GROUP_SIZE = 64
# Okabe-Ito colours (colour-blind safe), one per precision, so a setting has the same colour in every figure.
SETTING_COLORS: dict[int, str] = {16: "#0072B2", 8: "#E69F00", 4: "#009E73", 2: "#CC79A7"}
SETTING_MARKERS: dict[int, str] = {16: "o", 8: "s", 4: "^", 2: "D"}


COMPAT_LABELS = {"methods": "methods", "paper": "paper's code", "None": "methods"}  # docs/fidelity.md


def is_missing(value: Any) -> bool:
    """True for None and NaN (pandas gives both for absent fields)."""
    if value is None:
        return True
    try:
        return bool(math.isnan(value))
    except (TypeError, ValueError):
        return False


def paper_quant(pruner: str) -> str:
    """The paper's quantizer for a pruner: KIVI, except FlexGen for Ada-KV and HeadKV (Table 1's caption)."""
    return "flexgen" if pruner in ("adakv", "headkv") else "kivi"


def benchmark_family(name: Any) -> str:
    """``niah_small`` -> ``niah``; ``longbench_e`` stays itself (checked before ``longbench``)."""
    if is_missing(name):
        return ""
    name = str(name)
    for family in BENCHMARK_FAMILIES:
        if name == family or name.startswith(family + "_") or name.startswith(family + "-"):
            if family == "longbench" and (name == "longbench_e" or name.startswith("longbench_e_")):
                continue
            return family
    return name


def benchmark_suffix(name: Any) -> str:
    """What follows the family in a benchmark name: ``ruler_8k`` -> ``8k``, ``niah_small`` -> ``small``."""
    if is_missing(name):
        return ""
    name, family = str(name), benchmark_family(name)
    return name[len(family) + 1 :] if name != family and name.startswith(family) else ""


def is_reduced(name: Any) -> bool:
    """A quick variant (``niah_small``): its scores are not comparable with the paper's full benchmark."""
    return any(part in ("small", "tiny", "mini") for part in benchmark_suffix(name).split("_"))


def benchmark_label(name: Any, length: Any = None) -> str:
    """``longbench`` -> ``LongBench``; ``ruler`` at 4096 or ``ruler_4k`` -> ``RULER-4k``; ``niah_small`` ->
    ``NIAH (small)``."""
    if is_missing(name):
        return "?"
    name = str(name)
    family = benchmark_family(name)
    label = BENCHMARK_LABELS.get(family, name)
    suffix = benchmark_suffix(name)
    length_text = None if is_missing(length) else length_label(length)
    if re.fullmatch(r"\d+k", suffix):
        length_text = length_text or suffix
        suffix = ""
    if length_text:
        label = f"{label}-{length_text}" if family == "ruler" else f"{label} {length_text}"
    if suffix:
        label = f"{label} ({suffix.replace('_', ' ')})"
    return label


def pruner_label(name: Any) -> str:
    return "?" if is_missing(name) else PRUNER_LABELS.get(str(name), str(name))


def rotated_base(name: Any) -> str | None:
    """``kivi_rot`` -> ``kivi``: the unrotated quantizer of a rotated one; None for any other name."""
    if is_missing(name) or not str(name).endswith(ROTATED_SUFFIX) or len(str(name)) <= len(ROTATED_SUFFIX):
        return None
    return str(name)[: -len(ROTATED_SUFFIX)]


def quant_label(name: Any) -> str:
    """``kivi`` -> ``KIVI``; a rotated quantizer ``kivi_rot`` -> ``KIVI+rotation``; unknown names unchanged."""
    if is_missing(name):
        return "none"
    base = rotated_base(name)
    if str(name) not in QUANT_LABELS and base is not None:
        return f"{QUANT_LABELS.get(base, base)}+rotation"
    return QUANT_LABELS.get(str(name), str(name))


def model_label(name: Any) -> str:
    """The paper's spelling of a model name, or a readable form of an unknown one."""
    if is_missing(name):
        return "?"
    name = str(name)
    if name in MODEL_LABELS:
        return MODEL_LABELS[name]
    return name


def model_size(name: Any) -> float:
    """Parameters in billions parsed from the name (``llama32_1b`` -> 1, ``smollm2_135m`` -> 0.135); inf if none."""
    if is_missing(name):
        return math.inf
    for part in str(name).lower().split("_"):
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([mb])", part)
        if match:
            value = float(match.group(1))
            return value / 1000 if match.group(2) == "m" else value
    return math.inf


def model_variant(name: Any) -> str:
    """``base``, ``instruct`` or ``other`` from the name's suffix (Figure 4 separates them)."""
    name = "" if is_missing(name) else str(name)
    if name.endswith("_base"):
        return "base"
    if name.endswith("_instruct") or "_instruct_" in name:
        return "instruct"
    return "other"


def budget_label(budget: Any) -> str:
    """0.015625 -> ``1/64``; 1.0 -> ``1``; anything not a simple fraction -> its decimal form."""
    if is_missing(budget):
        return "–"
    frac = Fraction(float(budget)).limit_denominator(4096)
    if abs(float(frac) - float(budget)) > 1e-9:
        return f"{float(budget):.4g}"
    return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"


def setting_label(bits: Any, short: bool = True) -> str:
    """bits 4 -> ``4x4`` (short) or ``4x tokens, 4-bit``: the token multiple relative to 16-bit at equal memory."""
    if is_missing(bits):
        return "?"
    bits = int(bits)
    multiple = 16 // bits if bits and 16 % bits == 0 else 16 / bits
    return f"{multiple}x{bits}" if short else f"{multiple}x tokens, {bits}-bit"


def length_label(length: Any) -> str:
    """8192 -> ``8k``, 4000 -> ``4k``, 1500 -> ``1500``."""
    if is_missing(length):
        return "–"
    length = int(length)
    if length >= 1024 and length % 1024 == 0:
        return f"{length // 1024}k"
    if length >= 1000 and length % 1000 == 0:
        return f"{length // 1000}k"
    return str(length)


def tokens_label(tokens: Any) -> str:
    if is_missing(tokens):
        return "–"
    value = float(tokens)
    return str(int(value)) if value.is_integer() else f"{value:.1f}"


def order_index(order: tuple[str, ...], value: Any) -> tuple[int, str]:
    """Sort key: position in ``order``, unknown values after the known ones, alphabetically."""
    text = "" if is_missing(value) else str(value)
    return (order.index(text), "") if text in order else (len(order), text)


def sort_value(key: str, value: Any) -> tuple:
    """A sort key for a value of a named field, in the paper's order (pruners, precision high to low...)."""
    if is_missing(value):
        return (2, 0.0, "")
    if key == "pruner":
        return (0, *order_index(PRUNER_ORDER, value))
    if key == "quant":
        return (0, *order_index(QUANT_ORDER, value))
    if key == "category":
        return (0, *order_index(CATEGORY_ORDER, value))
    if key == "model":
        main = MAIN_MODELS.index(value) if value in MAIN_MODELS else len(MAIN_MODELS)
        return (0, main, model_size(value), str(value))
    if key in ("benchmark", "family"):
        return (
            0,
            *order_index(
                ("longbench", "longbench_e", "niah", "ruler", "crossentropy"), benchmark_family(value)
            ),
            str(value),
        )
    if key == "bits":
        return (0, -float(value), "")
    if isinstance(value, int | float):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def label(key: str, value: Any) -> str:
    """Display form of a value of a named field."""
    if key == "pruner":
        return pruner_label(value)
    if key == "quant":
        return quant_label(value)
    if key == "model":
        return model_label(value)
    if key == "benchmark":
        return benchmark_label(value)
    if key == "budget":
        return budget_label(value)
    if key == "setting":
        return setting_label(value)
    if key == "category":
        return CATEGORY_LABELS.get(str(value), str(value))
    if key in ("tokens", "tokens_key"):
        return tokens_label(value)
    if key == "bits":
        return "–" if is_missing(value) else f"{int(value)}-bit"
    if key == "group_size":
        return "–" if is_missing(value) else str(int(value))
    if key == "compat":
        return COMPAT_LABELS.get(str(value), str(value))
    if is_missing(value):
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
