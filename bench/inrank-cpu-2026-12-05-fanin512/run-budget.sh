#!/usr/bin/env bash
# Eighteenth session: the budget and the learning rate for B·A at full rank (same folder setup as run.sh). lowrank-full-lrb4 /
# -lra4 ran with a temporary param-group patch (LR_B / LR_A: ×4 learning rate on weight_b / weight_a), reverted after.
T=${TERN:?set TERN to the tern command, e.g. "dotnet src/Tern.Cli/bin/Release/net10.0/Tern.Cli.dll" with an absolute path}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size 8 --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every ${EVAL:-300} --eval-batches 8 --checkpoint-every 10000 --seed 1234 "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid' | tail -1 | cut -c1-200)"; }
STEPS=900 run full900; STEPS=900 run lowrank-full900 --low-rank 512
STEPS=1800 EVAL=600 run full1800; STEPS=1800 EVAL=600 run lowrank-full1800 --low-rank 512
LR=2e-3 EVAL=100 run lowrank-full-lr2 --low-rank 512; LR=5e-4 EVAL=100 run lowrank-full-lr05 --low-rank 512
