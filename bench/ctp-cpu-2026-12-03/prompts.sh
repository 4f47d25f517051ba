#!/bin/bash
# The soft prompts of the table: 100 steps each (STEPS=100 LR=1e-2), two trainings at a time, on the 2-core machine.
set -u
export STEPS=100 LR=1e-2
source /tmp/ctp/common.sh
train dense & train gptq3 & wait
train gptq2 & train sp50q4 & wait
