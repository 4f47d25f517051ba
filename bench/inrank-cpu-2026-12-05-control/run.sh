#!/usr/bin/env bash
# CPU control (sixteenth session): is InRank's gap the rank or the factorised parametrisation? full vs B·A at full rank vs
# B·A at half rank, with and without weight decay. Run in a folder holding config.json, train.bin, valid.bin and tokenizer/.
T=${TERN:?set TERN to the tern command, e.g. "dotnet src/Tern.Cli/bin/Release/net10.0/Tern.Cli.dll" with an absolute path}  # data: data/gpu (train.bin.xz: xz -d)
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-600} --seq-len 128 --batch-size 16 --lr ${LR:-1e-3} --warmup 60 --min-lr-ratio 0.1 --weight-decay ${WD:-0.1} --grad-clip 1.0 \
  --eval-every 100 --eval-batches 8 --checkpoint-every 10000 --seed 1234 "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -v '^$' | tail -1 | cut -c1-200)"; }
run full
run lowrank-full --low-rank 128
run lowrank-half --low-rank 64
WD=0 run full-wd0
WD=0 run lowrank-full-wd0 --low-rank 128
run lowrank-full-init0.7 --low-rank 128 --inrank-init-scale 0.7
run lowrank-full-init1.4 --low-rank 128 --inrank-init-scale 1.4
LR=2e-3 run full-lr2
LR=2e-3 run lowrank-full-lr2 --low-rank 128
I="--inrank --inrank-max-rank-fraction 1 --inrank-buffer 16 --inrank-stage1-steps 400"
run inrank-init1 $I
run inrank-init1.6 $I --inrank-init-scale 1.6
