"""RULER (NVIDIA/RULER): the 13 synthetic tasks, generated at any length for a tokenizer, with RULER's scoring.

- :mod:`.constants`: templates, answer prefixes, generation lengths, the task configurations;
- :mod:`.generators`: the generators and the token-length search;
- :mod:`.metrics`: ``string_match_all``, ``string_match_part``, ``postprocess_pred``;
- :mod:`.qa`: SQuAD / HotpotQA for qa_1 / qa_2;
- :class:`Ruler`: the benchmark.
"""

from .benchmark import Ruler
from .constants import ALL_TASKS, PAPER_TASKS, QA_TASKS, TASKS
from .metrics import postprocess_pred, string_match_all, string_match_part

__all__ = [
    "ALL_TASKS",
    "PAPER_TASKS",
    "QA_TASKS",
    "TASKS",
    "Ruler",
    "postprocess_pred",
    "string_match_all",
    "string_match_part",
]
