#!/usr/bin/env bash
# Twenty-third session (CPU): InRank with the original variant (released rule, stage 1 = 400 steps) at batch 8 over 1,200 steps,
# beside run.sh's full-rank run (same folder, same tokens).
T=${TERN:?set TERN to the tern command, e.g. "dotnet src/Tern.Cli/bin/Release/net10.0/Tern.Cli.dll" with an absolute path}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size ${BATCH:-8} --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every ${EVAL:-100} --eval-batches 8 --checkpoint-every 10000 --seed ${SEED:-1234} "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid' | tail -1 | cut -c1-200)"; }
STEPS=1200 EVAL=300 run inrank-original-b8-1200 --inrank --inrank-variant original --inrank-stage1-steps 400
# A second seed of both (full rank and InRank), same recipe:
SEED=5678 STEPS=1200 EVAL=300 run full-b8-1200-seed2
SEED=5678 STEPS=1200 EVAL=300 run inrank-original-b8-1200-seed2 --inrank --inrank-variant original --inrank-stage1-steps 400
