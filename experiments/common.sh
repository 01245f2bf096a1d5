# Shared by the experiment scripts: run a Hydra sweep locally or on Slurm, then the report.
#   experiments/<name>.sh [--slurm] [Hydra overrides...]
# --slurm submits every run as a job of a Slurm array (conf/hydra/launcher/slurm_gpu.yaml; add e.g.
# hydra.launcher.partition=gpu). Reruns skip finished runs and resume partial ones.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
LAUNCHER=()
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--slurm" ]; then LAUNCHER=("hydra/launcher=slurm_gpu"); else ARGS+=("$arg"); fi
done
OUTPUT_ROOT="${OUTPUT_ROOT:-$ROOT/outputs}"

sweep() {  # sweep <hydra overrides...>: one multirun
  echo "+ run.py -m $* ${LAUNCHER[*]-} ${ARGS[*]-}" >&2
  (cd "$ROOT" && "$PY" run.py -m "output_root=$OUTPUT_ROOT" "$@" ${LAUNCHER[@]+"${LAUNCHER[@]}"} ${ARGS[@]+"${ARGS[@]}"})
}

report() {  # report <experiment name> [report options...]: tables and figures into results/<name>/
  local name="$1"; shift
  (cd "$ROOT" && "$PY" -m qpruning.report "$OUTPUT_ROOT/sweeps/$name" --out "$ROOT/results/$name" "$@")
}
