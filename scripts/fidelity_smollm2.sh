#!/usr/bin/env bash
# docs/fidelity.md's measured effect on SmolLM2-135M (issue 14): NIAH (niah_small) and the RULER subset
# (ruler_small) at budgets 1/32 and 1/16 of the 8k cache, 1x16 / 2x8 / 4x4 (bits 16, 8, 4 at the budget), SnapKV and
# PyramidKV + KIVI, in both modes. 48 runs; on a 2-core CPU several hours (about 2-4 minutes per run and benchmark).
# Reruns skip finished runs. Results: outputs/sweeps/fidelity, then the report into results/fidelity/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
OUTPUT_ROOT="${OUTPUT_ROOT:-$ROOT/outputs}"
cd "$ROOT"
"$PY" run.py -m model=smollm2_135m quant=kivi benchmark=niah_small,ruler_small pruner=snapkv,pyramidkv \
  tokens=null budget=0.03125,0.0625 bits=16,8,4 compat=methods,paper \
  experiment_name=fidelity "output_root=$OUTPUT_ROOT" "$@"
"$PY" -m qpruning.report "$OUTPUT_ROOT/sweeps/fidelity" --out "$ROOT/results/fidelity"
