"""The report's layering: it stands apart from the library's core, and its modules share only public names."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import qpruning.report

REPORT_DIR = Path(qpruning.report.__file__).parent
CORE = (
    "torch",
    "transformers",
    "triton",
    "hydra",
    "qpruning.cache",
    "qpruning.compressor",
    "qpruning.pruners",
    "qpruning.runner",
    "qpruning.models",
    "qpruning.kernels",
    "qpruning.attention",
)


def test_importing_the_report_and_its_cli_loads_nothing_of_the_core():
    code = (
        "import json, sys\n"
        "import qpruning.report, qpruning.report.__main__\n"
        f"core = {CORE!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if any(m == c or m.startswith(c + '.') for c in core))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _relative_imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from .module import name`` in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.module or "", alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level > 0
        for alias in node.names
    ]


def test_report_modules_import_no_private_name_from_each_other():
    private = [
        f"{path.relative_to(REPORT_DIR)}: from .{module} import {name}"
        for path in sorted(REPORT_DIR.rglob("*.py"))
        for module, name in _relative_imports(path)
        if name.startswith("_")
    ]
    assert private == []


def test_the_toolkit_modules_do_not_import_the_artefacts():
    """selection, plotting, render, throughput, ordering and uncertainty are below tables / figures, never above."""
    artefacts = {"tables", "figures", "build", "index"}
    upward = [
        f"{name}.py imports .{module}"
        for name in ("selection", "plotting", "render", "throughput", "ordering", "uncertainty")
        for module, _ in _relative_imports(REPORT_DIR / f"{name}.py")
        if module in artefacts
    ]
    assert upward == []
