"""RULER's scoring (NVIDIA/RULER ``scripts/eval/synthetic/constants.py`` and ``scripts/eval/evaluate.py``).

Both metrics take a list of predictions and a list of reference lists and return a percentage rounded to two
decimals; matching is case-insensitive sub-string containment.

- :func:`string_match_all` (niah, vt, cwe, fwe): per sample, the fraction of references found in the prediction;
- :func:`string_match_part` (qa): per sample, 1 if any reference is found.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NON_PRINTABLE = re.compile(r"[\x00-\x1f]")


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Percentage of predictions that contain at least one of their references (case-insensitive)."""
    total = sum(max(1.0 if r.lower() in pred.lower() else 0.0 for r in ref) for pred, ref in zip(preds, refs))
    return round(total / len(preds) * 100, 2)


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over predictions of the share of their references they contain (case-insensitive), in percent."""
    total = sum(
        sum(1.0 if r.lower() in pred.lower() else 0.0 for r in ref) / len(ref)
        for pred, ref in zip(preds, refs)
    )
    return round(total / len(preds) * 100, 2)


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def postprocess_pred(predict_str: str) -> str:
    """evaluate.py's ``postprocess_pred``: strip, turn control characters (newlines included) into newlines, strip."""
    predict_str = predict_str.strip()
    return _NON_PRINTABLE.sub("\n", predict_str).strip()
