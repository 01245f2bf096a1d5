"""The decode kernels compile for NVIDIA GPUs (sm_80, sm_90) without spilling, checked on a machine without one.

Triton's interpreter runs code that the GPU compiler may reject (``tl.dot`` shapes, layouts) and says nothing of
registers; Triton's wheel ships ``ptxas``, so the kernels are compiled ahead of time to cubins here, in a
subprocess without ``TRITON_INTERPRET`` (see :mod:`qpruning.backends.triton.compile_check`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton", reason="the fused decode kernels need Triton")

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
pytestmark = pytest.mark.skipif(not os.path.exists(PTXAS), reason="this Triton build ships no ptxas")


def run_without_interpreter(code: str, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


def test_default_kivi_4bit_kernel_compiles_for_h100_without_spills():
    code = (
        "from qpruning.backends.triton.compile_check import Variant, compile_variant, compile_merge, resource_usage\n"
        "u = resource_usage(compile_variant(Variant(4, 2, 1, 64, 64), 90))\n"
        "assert u['spill'] == 0 and u['reg'] <= 128 and u['shared'] <= 227 * 1024, u\n"
        "m = resource_usage(compile_merge(90))\n"
        "assert m['spill'] == 0, m\n"
        "print('ok', u)\n"
    )
    done = run_without_interpreter(code, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr[-3000:]


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_a100_and_h100():
    done = run_without_interpreter("from qpruning.backends.triton.compile_check import main; raise SystemExit(main())", 1800)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
