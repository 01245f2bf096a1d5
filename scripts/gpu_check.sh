#!/usr/bin/env bash
# The GPU check of issue 18 on a lent GPU machine, in one command (docs/gpu.md):
#
#   1. installs the wheels of .whl/ (make gpu-wheelhouse, here, beforehand) into a folder of their own with
#      `pip install --no-index --no-deps --target`, put first on PYTHONPATH: the machine's own torch, triton and
#      CUDA libraries are never touched (no torch wheel is in .whl/ and no dependency is resolved), and
#      the lock's transformers (5.25) shadows the machine's 5.17; then `pip install --no-deps -e .` (qpruning itself);
#   2. checks the wheelhouse's requirements against what is now installed (scripts/gpu_wheels_check.py);
#   3. runs scripts/gpu_check.py: parts a-d, CSV + Markdown into $OUT (default outputs/gpu_check).
#
#   bash scripts/gpu_check.sh                         # on the GPU machine
#   bash scripts/gpu_check.sh --device cpu --small    # CPU smoke run here: no install, kernels interpreted
#
# Arguments go to scripts/gpu_check.py. With --device cpu nothing is installed (the development environment
# has every package); the wheelhouse is only checked against the GPU machine's package list.
# PYTHON (default python3) is the interpreter; SITE (default /tmp/qpruning-site) where the wheels go.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/qpruning-site}
export OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"

device=cuda
prev=""
for arg in "$@"; do
    [ "$prev" = "--device" ] 2>/dev/null && device=$arg
    case $arg in --device=*) device=${arg#--device=} ;; esac
    prev=$arg
done

{
    echo "# gpu_check.sh $*  ($(date -u +%FT%TZ), $(hostname))"
    "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'
} >>"$LOG" 2>&1

if [ "$device" = "cuda" ]; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "error: no wheels in .whl/: run 'make gpu-wheelhouse' here first and carry .whl (docs/gpu.md)" | tee -a "$LOG"
        exit 2
    fi
    torch_before=$("$PYTHON" -c 'import torch; print(torch.__version__)')
    echo "## installing $(ls .whl/*.whl | wc -l) wheels into $SITE" >>"$LOG"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .whl/*.whl >>"$LOG" 2>&1 || { echo "error: installing .whl/ failed (see $LOG)" | tee -a "$LOG"; exit 2; }
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 \
        || echo "note: 'pip install --no-deps -e .' failed; qpruning is imported from PYTHONPATH instead" >>"$LOG"
    torch_after=$("$PYTHON" -c 'import torch; print(torch.__version__)')
    if [ "$torch_before" != "$torch_after" ]; then
        echo "error: torch changed from $torch_before to $torch_after" | tee -a "$LOG"
        exit 2
    fi
    "$PYTHON" scripts/gpu_wheels_check.py .whl --against installed >>"$LOG" 2>&1 \
        || echo "warning: some wheel requirements are unmet (see $LOG); running anyway" | tee -a "$LOG"
    "$PYTHON" -c 'import transformers, hydra, omegaconf, hqq, gguf, qpruning; print("transformers", transformers.__version__, "from", transformers.__file__)' \
        >>"$LOG" 2>&1 || { echo "error: the installed packages do not import (see $LOG)" | tee -a "$LOG"; exit 2; }
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PYTHON" scripts/gpu_wheels_check.py .whl --against box >>"$LOG" 2>&1 \
            || echo "warning: the wheelhouse misses requirements of the GPU machine (see $LOG)" | tee -a "$LOG"
    else
        echo "note: no .whl/ here (make gpu-wheelhouse); wheelhouse not checked" >>"$LOG"
    fi
fi

"$PYTHON" scripts/gpu_check.py "$@"
