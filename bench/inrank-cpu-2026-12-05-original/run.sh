#!/usr/bin/env bash
# Nineteenth session (CPU): InRank's original variant W = W0 + B·A (W0 frozen at the dense initialisation, B·A Kaiming as
# released) against full rank and the efficient variant B·A, on the fan-in-512 model of ../inrank-cpu-2026-12-05-fanin512/
# (its config.json here). Run in a folder holding config.json, train.bin, valid.bin and tokenizer/ (tools/gpu/data.sh makes
# data/gpu: train.bin from train.bin.xz through xz -d; tokenizer/ and valid.bin as they are). One seed; ~3.5 min per 300 steps.
T=${TERN:?set TERN to the tern command, e.g. "dotnet src/Tern.Cli/bin/Release/net10.0/Tern.Cli.dll" with an absolute path}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size 8 --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every ${EVAL:-100} --eval-batches 8 --checkpoint-every 10000 --seed ${SEED:-1234} "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid' | tail -1 | cut -c1-200)"; }
run full
run original-512 --low-rank 512 --inrank-variant original
run original-160 --low-rank 160 --inrank-variant original
run lowrank-160 --low-rank 160
STEPS=900 EVAL=300 run original-160-900 --low-rank 160 --inrank-variant original
STEPS=900 EVAL=300 run lowrank-160-900 --low-rank 160
STEPS=900 EVAL=300 run inrank-original-900 --inrank --inrank-variant original --inrank-stage1-steps 400
STEPS=900 EVAL=300 run inrank-efficient-900 --inrank --inrank-stage1-steps 400
SEED=5678 STEPS=900 EVAL=300 run full-900-seed2
SEED=5678 STEPS=900 EVAL=300 run inrank-original-900-seed2 --inrank --inrank-variant original --inrank-stage1-steps 400
# Twentieth session: a third seed.
SEED=9012 STEPS=900 EVAL=300 run full-900-seed3
SEED=9012 STEPS=900 EVAL=300 run inrank-original-900-seed3 --inrank --inrank-variant original --inrank-stage1-steps 400
STEPS=1800 EVAL=600 run original-160-1800 --low-rank 160 --inrank-variant original
STEPS=1800 EVAL=600 run inrank-original-1800 --inrank --inrank-variant original --inrank-stage1-steps 400
# Tried once with a temporary patch (B = 0 at the start, as LoRA: the update starts at zero, so W starts at W0), not kept:
#   original0-512 --low-rank 512 --inrank-variant original   → 5.3161, worse than the released Kaiming start (5.2544).
