#!/usr/bin/env bash
# Trains Tern's shipped default model on the GPU machine (see docs/state-of-work.md, bench/README.md). Three calls:
#   tools/gpu/default_model.sh stage    copy data/gpu (train.bin.xz, valid.bin, tokenizer/, validation.txt, kjv.txt.xz) to
#                                       /tmp/tern-data; carry data/gpu only, as .device and the data exceed one call's 64 MiB
#   tools/gpu/default_model.sh train    start training in the background (needs .device); returns at once
#   tools/gpu/default_model.sh status   the training log's last lines
#   tools/gpu/default_model.sh finish   export bf16 shards ≤ 15 MB, perplexity on validation and KJV, the transformers
#                                       reference for tests/fixtures/default-model-reference.safetensors; results to $OUT
# Data is made here by: tools/corpus/build.sh; tern tokenizer train/encode (docs/state-of-work.md, issue 3).
set -euo pipefail
D=/tmp/tern-data W=${W:-/tmp/tern-default}  # W and TRAIN_ARGS (extra train flags) let tools/gpu/sink_model.sh train a twin
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT" "$W"
tern() { dotnet .device/Tern.Cli/Tern.Cli.dll "$@"; }
case ${1:?stage|train|status|finish} in
  stage)
    mkdir -p $D && cp -r data/gpu/. $D/
    xz -d -f $D/train.bin.xz $D/kjv.txt.xz
    ls -la $D ;;
  train)
    source .device/env.sh
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $W/gpu.txt
    setsid nohup bash -c "source .device/env.sh; dotnet .device/Tern.Cli/Tern.Cli.dll train --config bench/configs/tern-14m/config.json \
        --train $D/train.bin --valid $D/valid.bin --tokenizer $D/tokenizer --output $W/run --device cuda --autocast bf16 \
        --steps ${STEPS:-3000} --seq-len 1024 --batch-size 32 --lr 1e-3 --warmup 150 --min-lr-ratio 0.1 --weight-decay 0.1 \
        --grad-clip 1.0 --eval-every 250 --eval-batches 5 --checkpoint-every 500 --seed 1234 ${TRAIN_ARGS:-} > $W/train.log 2>&1; echo done > $W/train.done" \
        > /dev/null 2>&1 < /dev/null &
    sleep 45; tr '\r' '\n' < $W/train.log | tail -5 ;;
  status)
    tr '\r' '\n' < $W/train.log | grep -v '^$' | tail -${LINES:-8}; ls $W ;;
  finish)
    source .device/env.sh
    test -f $W/train.done || { echo "training has not finished"; exit 1; }
    rm -rf $W/default
    tern export --model $W/run --output $W/default --dtype bf16 --max-shard-size 15MB
    for text in validation kjv; do
      tern eval ppl --model $W/default --text $D/$text.txt --device cuda --dtype fp32 --window 1024 --stride 512 2>&1 \
        | tr '\r' '\n' | grep -v '^$' | tail -3 | tee $W/ppl-$text.txt
    done
    python3 tools/gpu/default_model_reference.py $W/default $W/reference.safetensors
    # At most 8 files come back: the two shards, and one archive of everything else.
    cp $W/default/model-*.safetensors "$OUT"/
    tr '\r' '\n' < $W/train.log | grep -v '^$' > $W/train-clean.log
    tar -czf "$OUT/results.tar.gz" -C $W default/model.safetensors.index.json default/config.json default/generation_config.json \
        run/train-log.jsonl run/train-summary.json run/train-config.json gpu.txt train-clean.log ppl-validation.txt ppl-kjv.txt \
        reference.safetensors
    ls -la "$OUT" ;;
esac
