"""Head importance scores shipped with qpruning, for HeadKV (:mod:`qpruning.pruners.headkv`).

One JSON file per model, named after the model's config name (``conf/model/<name>.yaml``), e.g.
``smollm2_135m.json``; ``pruner=headkv`` finds it by the model's name when ``pruner.head_scores`` is not set.
The files are written by ``scripts/compute_head_scores.py``; the format is described in ``docs/headwise.md``.
"""

from __future__ import annotations

from pathlib import Path

SCORES_DIR = Path(__file__).resolve().parent


def shipped_path(model_name: str) -> Path:
    """Where the shipped scores of ``model_name`` would be (the file may not exist)."""
    return SCORES_DIR / f"{model_name}.json"


def shipped_models() -> list[str]:
    """The models that have a shipped scores file."""
    return sorted(p.stem for p in SCORES_DIR.glob("*.json"))
