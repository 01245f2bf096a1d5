"""qpruning's Hydra launcher plugin (``hydra/launcher=grouped``, conf/hydra/launcher/grouped.yaml).

Hydra finds launchers in the ``hydra_plugins`` namespace package: this folder is on the path when ``run.py`` runs
from the repository (its folder is ``sys.path[0]``) and is installed with the package (pyproject.toml).
"""
