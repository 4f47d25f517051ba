# Twenty-second session (CPU): the GPU model's 8 layers (config-8layers.json = bench/configs/tern-30m) at the nineteenth
# session's CPU recipe, full rank against the original variant at fixed rank 160; run in a folder holding config.json (this
# config), train.bin, valid.bin and tokenizer/ (see ../inrank-cpu-2026-12-05-original/run.sh). The *-emu summaries are the
# 2-layer model with every linear layer rounded to bf16 (a temporary patch of Linear.Apply, not kept).
T=${TERN:?set TERN to the tern command, e.g. "dotnet src/Tern.Cli/bin/Release/net10.0/Tern.Cli.dll" with an absolute path}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size 8 --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every ${EVAL:-100} --eval-batches 8 --checkpoint-every 10000 --seed ${SEED:-1234} "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid' | tail -1 | cut -c1-200)"; }
run full-8l
run original-160-8l --low-rank 160 --inrank-variant original
