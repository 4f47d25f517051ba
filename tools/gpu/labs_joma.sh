#!/usr/bin/env bash
# Issue 17: JoMA's prediction on a real training run — per layer, attention first sparsifies (entropy falls) and then becomes
# denser again. Trains the shipped default model's recipe (tools/gpu/default_model.sh: 3000 steps × 32 × 1024 tokens, AdamW
# 1e-3, bf16 autocast) with `tern train --probe-dynamics`, which records at step 0, every $EVERY steps and the last step, per
# layer, the mean attention entropy on 4 fixed validation windows of 1024 tokens and the stable rank of each MLP matrix
# (gate, up, down) into the run's dynamics/dynamics.csv. Calls on the GPU machine, one each:
#   tools/gpu/labs_joma.sh stage     copy data/gpu to /tmp/tern-data (carry data/gpu only: with .device it passes 64 MiB)
#   tools/gpu/labs_joma.sh train     start training in the background (needs .device from tools/gpu/pack.sh); returns at once
#   tools/gpu/labs_joma.sh status    the training log's last lines and the probe rows so far
#   tools/gpu/labs_joma.sh collect   after training: dynamics.csv, the training log, summary and config to $OUT (one archive)
# Then, where the archive comes back (the GPU pack has no plotting natives):
#   tar -xzf joma-results.tar.gz && tern lab joma plot run/dynamics/dynamics.csv --title "default model, H100"
#   → run/dynamics/attention-entropy.png, stable-rank-{gate,up,down}.png
# Rehearsal on a CPU (same flags, a tiny run on random token ids, minutes on 2 cores; needs the CLI built in Release):
#   tools/gpu/labs_joma.sh cpu       writes /tmp/tern-joma-cpu/run/dynamics/{dynamics.csv,*.png}
set -uo pipefail
EVERY=${EVERY:-25}; W=${W:-/tmp/tern-joma}
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT"
probe="--probe-dynamics --probe-every $EVERY --probe-windows 4"
case ${1:?stage|train|status|collect|cpu} in
  stage) bash tools/gpu/default_model.sh stage ;;
  train)
    mkdir -p "$W"
    W=$W TRAIN_ARGS="$probe" bash tools/gpu/default_model.sh train ;;
  status)
    tr '\r' '\n' < $W/train.log | grep -v '^$' | tail -${LINES:-5}
    echo "probe rows: $(($(wc -l < $W/run/dynamics/dynamics.csv) - 1))"; tail -3 $W/run/dynamics/dynamics.csv ;;
  collect)
    test -f $W/train.done || { echo "training has not finished"; tr '\r' '\n' < $W/train.log | tail -3; exit 1; }
    tr '\r' '\n' < $W/train.log | grep -v '^$' > $W/train-clean.log
    tar -czf "$OUT/joma-results.tar.gz" -C $W run/dynamics/dynamics.csv run/train-log.jsonl run/train-summary.json \
        run/train-config.json train-clean.log gpu.txt
    ls -la "$OUT" ;;
  cpu)
    C=/tmp/tern-joma-cpu; rm -rf $C; mkdir -p $C
    python3 -c "
import random, struct
for name, n, seed in (('train', 200000, 1), ('valid', 20000, 2)):
    r = random.Random(seed)
    open('$C/' + name + '.bin', 'wb').write(struct.pack('<%dH' % n, *(r.randrange(8192) for _ in range(n))))"
    src/Tern.Cli/bin/Release/net10.0/Tern.Cli train --config bench/configs/tern-14m/config.json --train $C/train.bin \
        --valid $C/valid.bin --output $C/run --device cpu --steps ${STEPS:-12} --seq-len 128 --batch-size 4 --lr 1e-3 --warmup 3 \
        --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 --eval-every 6 --eval-batches 1 --checkpoint-every 500 --seed 1234 \
        --probe-dynamics --probe-every ${EVERY_CPU:-4} --probe-windows 2 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -4
    cat $C/run/dynamics/dynamics.csv; ls $C/run/dynamics ;;
esac
