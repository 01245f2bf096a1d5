#!/usr/bin/env bash
# Figure 4 (and the appendix's Figure 5 with budget=0.0625): model scale, PyramidKV at 1/64, LongBench.
# Llama-3-70B needs a node with ~2x80 GB of GPU memory (device_map=auto).
source "$(dirname "$0")/common.sh"
sweep experiment=fig4
report fig4
