#!/usr/bin/env bash
# Table 4: decoding throughput and KV memory per batch item, 128x16 / 256x8 / 512x4 (SnapKV + KIVI),
# batch 64 / 96 / 128, Mistral-7B and Llama-3-8B architectures with random weights (a GPU is needed).
source "$(dirname "$0")/common.sh"
(cd "$ROOT" && "$PY" scripts/bench_throughput.py --out "$ROOT/results/table4" ${ARGS[@]+"${ARGS[@]}"})
report table4 --throughput "$ROOT/results/table4/throughput.csv"
