#!/usr/bin/env bash
# Figure 3: input lengths (LongBench-E buckets; RULER 4k, 8k, and 16k where the window allows), PyramidKV.
source "$(dirname "$0")/common.sh"
sweep experiment=fig3 model=llama3_8b_instruct,mistral_7b_instruct_v02 benchmark=longbench_e
sweep experiment=fig3 model=llama3_8b_instruct benchmark=ruler,ruler_8k
sweep experiment=fig3 model=mistral_7b_instruct_v02 benchmark=ruler,ruler_8k,ruler_16k
report fig3
