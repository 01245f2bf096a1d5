#!/usr/bin/env bash
# Table 3: group size 32 / 64 / 128 for SnapKV and PyramidKV keeping 512 tokens at 4 bits (LongBench).
source "$(dirname "$0")/common.sh"
sweep experiment=table3 model=llama3_8b_instruct
sweep experiment=table3 model=mistral_7b_instruct_v02 full_cache_tokens=16384
report table3
