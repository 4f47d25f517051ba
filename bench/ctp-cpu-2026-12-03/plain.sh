#!/bin/bash
# Perplexity of every model without a prompt (validation and KJV, 16,353 tokens each, windows of 512, stride 511).
set -u
source /tmp/ctp/common.sh
echo "model,text,prompt,scored_tokens,mean_nll,perplexity,released_perplexity" > $OUT/ctp.csv
for m in $ORDER; do evaluate $m none; done
