"""LongBench and LongBench-E (THUDM/LongBench v1): official prompts, generation lengths, metrics and data.

- :mod:`.prompts`: ``DATASET2PROMPT``, ``DATASET2MAXLEN``, dataset lists, Table 2 categories, length buckets;
- :mod:`.metrics`: the official metric functions, ``dataset2metric``, ``scorer`` and ``scorer_e``;
- :mod:`.data`: the official jsonl files from a folder, the cache or the hub, with a clear error offline;
- :class:`LongBench`, :class:`LongBenchE`: the benchmarks.
"""

from .benchmark import LongBench, LongBenchE
from .prompts import (
    ALL_DATASETS,
    CATEGORIES,
    CHINESE_DATASETS,
    DATASET2MAXLEN,
    DATASET2PROMPT,
    E_DATASETS,
    ENGLISH_DATASETS,
    LENGTH_BUCKETS,
    NO_CHAT_TEMPLATE,
    PAPER_E_DATASETS,
)

__all__ = [
    "ALL_DATASETS",
    "CATEGORIES",
    "CHINESE_DATASETS",
    "DATASET2MAXLEN",
    "DATASET2PROMPT",
    "E_DATASETS",
    "ENGLISH_DATASETS",
    "LENGTH_BUCKETS",
    "NO_CHAT_TEMPLATE",
    "PAPER_E_DATASETS",
    "LongBench",
    "LongBenchE",
]
