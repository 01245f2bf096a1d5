#!/usr/bin/env bash
# Figure 2: 1x16 / 2x8 / 4x4 across budgets 1/128 ... 1/4 (SnapKV, PyramidKV; LongBench, NIAH).
source "$(dirname "$0")/common.sh"
sweep experiment=fig2 model=llama3_8b_instruct
# Mistral-7B-v0.2: the full cache is 16k tokens on LongBench and 32k on NIAH (Appendix B); NIAH steps by 400.
sweep experiment=fig2 model=mistral_7b_instruct_v02 benchmark=longbench full_cache_tokens=16384
sweep experiment=fig2 model=mistral_7b_instruct_v02 benchmark=niah full_cache_tokens=32768 benchmark.length_step=400
report fig2
