#!/usr/bin/env bash
# CPU control (seventeenth session): does the factors' init scale recover full rank's quality at the 30M model's fan-in (512)?
# full vs B·A at full rank, scale 1.0 and 1.41. Run in a folder holding config.json, train.bin, valid.bin and tokenizer/
# (data/gpu: train.bin.xz through xz -d), as ../inrank-cpu-2026-12-05-control/run.sh.
T=${TERN:?set TERN to the tern command, e.g. "dotnet src/Tern.Cli/bin/Release/net10.0/Tern.Cli.dll" with an absolute path}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size 8 --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every 100 --eval-batches 8 --checkpoint-every 10000 --seed 1234 "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid|ppl|perplex' | tail -1 | cut -c1-200)"; }
run full
run lowrank-full --low-rank 512
run lowrank-full-init1.41 --low-rank 512 --inrank-init-scale 1.41
