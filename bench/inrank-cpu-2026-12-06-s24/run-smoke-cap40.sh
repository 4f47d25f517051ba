#!/usr/bin/env bash
# Twenty-fourth session (CPU smoke of the next GPU chain's flags): alpha 0.99 with the cap at 40% (Rmax 304, cap 204).
T=${TERN:?set TERN}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size ${BATCH:-8} --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every ${EVAL:-100} --eval-batches 8 --checkpoint-every 10000 --seed ${SEED:-1234} "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid' | tail -1 | cut -c1-200)"; }
STEPS=360 EVAL=120 run inrank-a99-cap40-smoke --inrank --inrank-variant original --inrank-stage1-steps 300 --inrank-max-rank-fraction 0.595 --inrank-threshold 0.99
