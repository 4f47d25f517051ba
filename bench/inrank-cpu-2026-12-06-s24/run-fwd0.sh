#!/usr/bin/env bash
# Twenty-fourth session (CPU): the original variant at fixed rank 160, batch 8 x 1,200 steps, with the factors' weight decay 0
# (the run's 0.1 elsewhere), against the twenty-third session's same run with 0.1 everywhere (4.5581, full rank 4.5427).
T=${TERN:?set TERN}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size ${BATCH:-8} --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every ${EVAL:-100} --eval-batches 8 --checkpoint-every 10000 --seed ${SEED:-1234} "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid' | tail -1 | cut -c1-200)"; }
STEPS=1200 EVAL=300 run original-160-b8-1200-fwd0 --low-rank 160 --inrank-variant original --factor-weight-decay 0
