#!/usr/bin/env bash
# Table 2: task types (LongBench categories, RULER-8k), PyramidKV at 1/16: 512x16, 1024x8, 2048x4.
source "$(dirname "$0")/common.sh"
sweep experiment=table2 model=llama3_8b_instruct,mistral_7b_instruct_v02
report table2
