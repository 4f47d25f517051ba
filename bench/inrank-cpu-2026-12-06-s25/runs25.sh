#!/usr/bin/env bash
# Twenty-fifth session (CPU; --inrank-zero-update existed at commit 6412c00 and was removed after these runs): the original variant's early gap — B zero at the start (--inrank-zero-update) against both factors
# drawn, and full rank, batch 8 x 400 steps (stage 1 all of it), validation every 50 steps.
T=${TERN:?set TERN}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size ${BATCH:-8} --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every ${EVAL:-100} --eval-batches 8 --checkpoint-every 10000 --seed ${SEED:-1234} "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid' | tail -1 | cut -c1-200)"; }
STEPS=400 EVAL=50 run original-zero-400 --inrank --inrank-variant original --inrank-stage1-steps 400 --inrank-zero-update
STEPS=400 EVAL=50 run original-drawn-400 --inrank --inrank-variant original --inrank-stage1-steps 400
STEPS=400 EVAL=50 run full-400
