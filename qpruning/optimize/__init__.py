"""Beyond the paper: search the per-layer token-precision allocation for a model and a memory budget.

``qpruning optimize model=... budget=... pruner=...`` (see :mod:`qpruning.optimize.driver`).
"""

from qpruning.optimize.allocation import Allocation, Geometry, GroupSetting

__all__ = ["Allocation", "Geometry", "GroupSetting"]
