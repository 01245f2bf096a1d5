#!/usr/bin/env bash
# Table 1: quantizing pruned tokens (Llama-3-8B-Instruct, LongBench + NIAH, 128/512/2048 tokens x 16/8/4/2 bits).
source "$(dirname "$0")/common.sh"
sweep experiment=table1                                              # StreamingLLM, H2O, SnapKV, PyramidKV + KIVI
sweep experiment=table1 pruner=adakv,headkv quant=flexgen compat=methods  # head-wise budgets + FlexGen: absent from the paper's code, so as their own papers define them
report table1
