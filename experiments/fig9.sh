#!/usr/bin/env bash
# Figure 9: layer-wise token-precision (SnapKV at 1/64, 4x4 baseline vs 2x8 / 1x16 on one layer range).
source "$(dirname "$0")/common.sh"
sweep experiment=fig9
report fig9
