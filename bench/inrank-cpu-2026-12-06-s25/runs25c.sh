#!/usr/bin/env bash
# Twenty-fifth session (CPU): InRank's hand-off with the factors' Adam moments sliced (as released) against reset, batch 8 x 600
# steps with stage 1 = 300 (the GPU gap opened at the hand-off).
T=${TERN:?set TERN}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size ${BATCH:-8} --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every ${EVAL:-100} --eval-batches 8 --checkpoint-every 10000 --seed ${SEED:-1234} "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid' | tail -1 | cut -c1-200)"; }
STEPS=600 EVAL=50 run original-slice-600 --inrank --inrank-variant original --inrank-stage1-steps 300
STEPS=600 EVAL=50 run original-reset-600 --inrank --inrank-variant original --inrank-stage1-steps 300 --inrank-moments reset
