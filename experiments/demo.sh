#!/usr/bin/env bash
# The token-precision trade-off on the embedded SmolLM2 (CPU, ~15 minutes on two cores): SnapKV + KIVI keeping
# 256 tokens at 16 bits, 512 at 8 or 1024 at 4 (1/32 of an 8k cache) on a NIAH grid and a RULER-4k subset.
source "$(dirname "$0")/common.sh"
sweep experiment=demo
report demo
