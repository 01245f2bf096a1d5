#!/usr/bin/env bash
# Figure 10: quantization strategies (FlexGen, KIVI, each with and without 1% outliers), 512 tokens at 4 bits.
source "$(dirname "$0")/common.sh"
sweep experiment=fig10
report fig10
