"""Result folders -> pandas -> the paper's tables and figures (``python -m qpruning.report``).

Public API:

- :func:`collect_runs` (``collect.py``): walk folders, one row per run folder, complete / partial / duplicate.
- :func:`load_paper` (``paper.py``): the paper's published numbers from ``results/paper/*.csv``.
- ``selection.py``: which runs fit an artefact and one run per cell (``pick_runs``), shared by tables and figures.
- ``tables.py``: ``table1`` ... ``table4`` -> :class:`ReportTable` (``render.py``: the table model and
  ``write_table``: CSV, Markdown, LaTeX); :func:`read_throughput` (``throughput.py``) reads Table 4's input.
- ``figures/``: one module per figure, each a declaration (``FigureSpec``) drawn by ``figures.spec.render``;
  ``figure1_crossentropy`` ... ``figure10_quant``, ``niah_heatmaps`` -> PNG (``plotting.py``: the style, grids,
  legends and bars they share; :class:`FigureResult`).
- :func:`build_report` (``build.py``): all of it into a folder with ``index.md``; :func:`push_to_wandb`.

Nothing here imports Hydra, torch or the library's core (``tests/report/test_report_imports.py``);
``docs/report.md`` describes inputs, outputs, rules and the modules.
"""

from .build import Report, build_report, push_to_wandb
from .collect import KEY_FIELDS, Collection, collect_runs, read_predictions
from .paper import PaperNumbers, load_paper
from .plotting import FigureResult
from .render import ReportTable, to_latex, to_markdown, write_table
from .throughput import read_throughput

__all__ = [
    "KEY_FIELDS",
    "Collection",
    "FigureResult",
    "PaperNumbers",
    "Report",
    "ReportTable",
    "build_report",
    "collect_runs",
    "load_paper",
    "push_to_wandb",
    "read_predictions",
    "read_throughput",
    "to_latex",
    "to_markdown",
    "write_table",
]
