#!/usr/bin/env bash
# Figure 1: cross-entropy against the compression ratio: pruning (16 bits), quantization (all tokens), both.
source "$(dirname "$0")/common.sh"
sweep experiment=fig1                                           # SnapKV at 16 and 4 bits across budgets
sweep experiment=fig1_quant                                     # quantization alone (every token)
report fig1
