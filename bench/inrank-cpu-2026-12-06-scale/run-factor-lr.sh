# Twenty-second session (CPU): as run-batch32.sh, the original variant at rank 160 with the factors' learning rate scaled
# (tern train --factor-lr-scale, the argument); x2 and x4 were stopped after step ~110 (their *-valid.txt).
T=${TERN:?set TERN to the tern command, e.g. "dotnet src/Tern.Cli/bin/Release/net10.0/Tern.Cli.dll" with an absolute path}
run() { name=$1; shift; rm -rf $name; $T train --config config.json --train train.bin --valid valid.bin --tokenizer tokenizer --output $name \
  --device cpu --steps ${STEPS:-300} --seq-len 128 --batch-size ${BATCH:-8} --lr ${LR:-1e-3} --warmup 30 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every ${EVAL:-100} --eval-batches 8 --checkpoint-every 10000 --seed ${SEED:-1234} "$@" > $name.log 2>&1; echo "$name: $(tr '\r' '\n' < $name.log | grep -iE 'valid' | tail -1 | cut -c1-200)"; }
BATCH=32 run original-160-b32-f$1 --low-rank 160 --inrank-variant original --factor-lr-scale $1
