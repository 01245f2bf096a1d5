"""RULER's QA sources: SQuAD v2.0 dev (qa_1) and HotpotQA dev distractor (qa_2).

The official files, as RULER's ``scripts/data/synthetic/json/download_qa_dataset.sh`` fetches them:

- ``squad.json``: https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json
- ``hotpotqa.json``: http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json

Where they are looked for, in order: ``qa_data_dir`` (``benchmark.qa_data_dir=DIR``), the qpruning cache
``<cache>/data/ruler_qa`` (where ``scripts/download_ruler_qa.py`` writes by default), then the hub when it is
reachable (``rajpurkar/squad_v2`` and ``hotpotqa/hotpot_qa`` ``distractor``, converted to the official schema
and saved in the cache). When none has them, the task is skipped (the benchmark logs one message).

:func:`read_squad` and :func:`read_hotpotqa` follow RULER's ``qa.py``: a sorted list of unique documents and,
per question, the indices of its gold document(s) and (SQuAD) of the other paragraphs of the same article.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qpruning.errors import DataError

from ..base import DataNotFoundError
from ..common import data_cache_dir, hub_offline_by_env, hub_reachable

logger = logging.getLogger(__name__)

FILES = {"squad": "squad.json", "hotpotqa": "hotpotqa.json"}
URLS = {
    "squad": "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",
    "hotpotqa": "http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json",
}
HUB = {
    "squad": ("rajpurkar/squad_v2", None, "validation"),
    "hotpotqa": ("hotpotqa/hotpot_qa", "distractor", "validation"),
}


def default_dir() -> Path:
    return data_cache_dir("ruler_qa")


def read_squad(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """RULER's ``read_squad``: answerable questions of a SQuAD json file, and the sorted unique paragraphs."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = []
    for article in data["data"]:
        article_docs = [index[p["context"]] for p in article["paragraphs"]]
        for paragraph in article["paragraphs"]:
            own = index[paragraph["context"]]
            for qa in paragraph["qas"]:
                if qa.get("is_impossible", False):
                    continue
                qas.append(
                    {
                        "query": qa["question"],
                        "outputs": [a["text"] for a in qa["answers"]],
                        "context": [own],
                        "more_context": [i for i in article_docs if i != own],
                    }
                )
    return _strings(qas, docs)


def read_hotpotqa(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """RULER's ``read_hotpotqa``: every question with its ten paragraphs ("title\\nsentences") as gold context."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = [
        {
            "query": d["question"],
            "outputs": [d["answer"]],
            "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]],
        }
        for d in data
    ]
    return _strings(qas, docs)


def _strings(qas: list[dict[str, Any]], docs: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """``(qas, docs)``, once every document, question and answer is checked to be a string (a TypeError names
    the first that is not)."""
    for doc in docs:
        if not isinstance(doc, str):
            raise TypeError(f"a paragraph is {type(doc).__name__} {doc!r}, not a string")
    for qa in qas:
        texts = [qa["query"], *qa["outputs"]]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"the question {qa['query']!r} or one of its answers {qa['outputs']!r} is not a string")
    return qas, docs


READERS = {"squad": read_squad, "hotpotqa": read_hotpotqa}


def find(dataset: str, qa_data_dir: str | os.PathLike | None) -> Path | None:
    """The local official file of ``dataset`` (``squad`` or ``hotpotqa``), if there is one."""
    folders = [Path(qa_data_dir)] if qa_data_dir is not None else []
    folders.append(default_dir())
    for folder in folders:
        if (folder / FILES[dataset]).is_file():
            return folder / FILES[dataset]
    return None


def _squad_rows_to_official(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    articles: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        paragraphs = articles.setdefault(row["title"], {})
        texts = list(row["answers"]["text"])
        starts = list(row["answers"]["answer_start"])
        paragraphs.setdefault(row["context"], []).append(
            {
                "id": row["id"],
                "question": row["question"],
                "answers": [{"text": t, "answer_start": s} for t, s in zip(texts, starts)],
                "is_impossible": not texts,
            }
        )
    return {
        "version": "v2.0",
        "data": [
            {"title": title, "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs.items()]}
            for title, paragraphs in articles.items()
        ],
    }


def _hotpot_rows_to_official(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "_id": row["id"],
            "question": row["question"],
            "answer": row["answer"],
            "context": [[t, list(s)] for t, s in zip(row["context"]["title"], row["context"]["sentences"])],
        }
        for row in rows
    ]


def download_from_hub(dataset: str, out_dir: str | os.PathLike | None = None) -> Path:
    """Fetch ``dataset`` from the hub with ``datasets.load_dataset`` and save it in the official schema."""
    from datasets import load_dataset

    repo, config, split = HUB[dataset]
    rows = load_dataset(repo, config, split=split) if config else load_dataset(repo, split=split)
    official = _squad_rows_to_official(rows) if dataset == "squad" else _hotpot_rows_to_official(rows)
    out = Path(out_dir) if out_dir is not None else default_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILES[dataset]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(official), encoding="utf-8")
    os.replace(tmp, path)
    return path


def locate(dataset: str, qa_data_dir: str | os.PathLike | None = None, hub_timeout: float = 3.0) -> Path:
    """The official file of ``dataset``, from the local folders or, when reachable, the hub.

    Raises:
        DataNotFoundError: nowhere to be found; the message says how to get it.
    """
    path = find(dataset, qa_data_dir)
    if path is not None:
        return path
    where = [str(Path(qa_data_dir) / FILES[dataset])] if qa_data_dir is not None else []
    where.append(str(default_dir() / FILES[dataset]))
    fix = (
        f"not found in {' or '.join(where)}; run on a machine with internet "
        "`python scripts/download_ruler_qa.py --out DIR`, copy DIR here and set benchmark.qa_data_dir=DIR"
    )
    if hub_offline_by_env():
        raise DataNotFoundError(f"RULER {dataset} data {fix} (the hub is disabled by HF_HUB_OFFLINE).")
    if not hub_reachable(hub_timeout, repo=HUB[dataset][0]):
        raise DataNotFoundError(
            f"RULER {dataset} data {fix} (the hub is unreachable: no answer within {hub_timeout:g} s)."
        )
    try:
        return download_from_hub(dataset)
    except Exception as exc:
        raise DataNotFoundError(f"RULER {dataset} data {fix} (hub download failed: {exc}).") from exc


def load(dataset: str, qa_data_dir: str | os.PathLike | None = None, hub_timeout: float = 3.0):
    """``(qas, docs)`` of ``dataset`` (see :func:`read_squad`, :func:`read_hotpotqa`)."""
    path = locate(dataset, qa_data_dir, hub_timeout)
    allowed = f"allowed: the official {FILES[dataset]} ({URLS[dataset]}); fetch it with scripts/download_ruler_qa.py"
    try:
        qas, docs = READERS[dataset](path)
    except json.JSONDecodeError as exc:
        raise DataError(f"data file {path} is not JSON (line {exc.lineno}: {exc.msg})", allowed) from None
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise DataError(f"data file {path} is not a {dataset} file ({type(exc).__name__}: {exc})", allowed) from None
    if not qas:
        raise DataError(f"data file {path} holds no questions", allowed)
    return qas, docs
