#!/bin/bash
# Prompt phase, evaluations (the run was cut to two pairs of prompts for time: dense, gptq3, gptq2, sp50q4).
set -u
source /tmp/ctp/common.sh
for m in dense gptq3; do evaluate $m own $OUT/prompt-$m.safetensors; done
evaluate gptq4 from-gptq3 $OUT/prompt-gptq3.safetensors
evaluate gptq2 from-gptq3 $OUT/prompt-gptq3.safetensors
evaluate rtn3 from-gptq3 $OUT/prompt-gptq3.safetensors
evaluate rtn4 from-gptq3 $OUT/prompt-gptq3.safetensors
evaluate gptq3 from-dense $OUT/prompt-dense.safetensors
for m in dense gptq3; do # control: the untrained starting prompt (embeddings of token ids 0..99)
  $T prompt train -m ${PATHS[$m]} --device cpu --text $D/ptrain.txt --tokens 100 --seq-len 512 --steps 1 --warmup 1 --lr 1e-30 -o $OUT/init-$m.safetensors > /dev/null 2>&1
  evaluate $m init $OUT/init-$m.safetensors
done
while [ ! -f $OUT/prompt-gptq2.safetensors ] || [ ! -f $OUT/prompt-sp50q4.safetensors ]; do sleep 10; done
for m in gptq2 sp50q4; do evaluate $m own $OUT/prompt-$m.safetensors; done
evaluate rtn2 from-gptq2 $OUT/prompt-gptq2.safetensors
evaluate sp50 from-sp50q4 $OUT/prompt-sp50q4.safetensors
evaluate sp75 from-sp50q4 $OUT/prompt-sp50q4.safetensors
evaluate dense from-sp50q4 $OUT/prompt-sp50q4.safetensors
echo DONE >> $OUT/eval.log
