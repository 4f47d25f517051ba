#!/usr/bin/env bash
# Twenty-fifth session (CPU; --inrank-zero-update existed at commit 6412c00): the init alone at one fixed rank (160, the original variant), B zero against both drawn, 400 steps.
T=${TERN:?set TERN}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size ${BATCH:-8} --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every ${EVAL:-100} --eval-batches 8 --checkpoint-every 10000 --seed ${SEED:-1234} "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid' | tail -1 | cut -c1-200)"; }
STEPS=400 EVAL=50 run original-160-zero-400 --low-rank 160 --inrank-variant original --inrank-zero-update
STEPS=400 EVAL=50 run original-160-drawn-400 --low-rank 160 --inrank-variant original
