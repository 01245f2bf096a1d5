"""Hydra entry point: one run of model x compressor x benchmark, or a grid of them with ``-m``.

    python run.py                                        # the embedded default: SmolLM2 on CPU, NIAH, SnapKV 4-bit
    python run.py -m pruner=snapkv,pyramidkv bits=4,8,16 # six runs
    python run.py -m experiment=fig2                     # a paper figure's grid (see experiments/)

Hydra's ``main`` runs :func:`qpruning.entry.run_task` on ``conf/config.yaml``, after a preflight that checks the
configuration of every job: a mistake is one line (``qpruning: error: ...``) and exit status 2 (``--debug`` for
the traceback).
"""

import sys

from qpruning.entry import hydra_entry, run_task

if __name__ == "__main__":
    hydra_entry("config", run_task, sys.argv[1:], "run.py")
