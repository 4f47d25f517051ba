#!/usr/bin/env bash
# Issue 4: a twin of the default model trained with a fixed first token (--start-token $START, its bos_token_id), on which an
# attention sink forms, so StreamingLLM's contrast (window fails once the first token leaves the cache, sink stays flat)
# shows on a model of Tern's own. Calls, one each:
#   tools/gpu/sink_model.sh stage    copy data/gpu to /tmp/tern-data (carry data/gpu; not .device: together they pass 64 MiB)
#   tools/gpu/sink_model.sh train    train in the background (needs .device): tools/gpu/default_model.sh's recipe + --start-token
#   tools/gpu/sink_model.sh eval     after training: attention on the first token, and the stream evaluation, in the background
#   tools/gpu/sink_model.sh status   the logs' last lines
#   tools/gpu/sink_model.sh collect  results to $OUT (one archive; plots are drawn where it comes back: tern eval plot)
# START picks the first token: 0 (<|endoftext|>, also the document separator inside the stream) or an id that never occurs
# in train.bin (125, an unused byte token: a dedicated placeholder as in StreamingLLM §3.3's learnable sink).
set -uo pipefail
START=${START:-0}; D=/tmp/tern-data W=/tmp/tern-sink-$START
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT" "$W"
case ${1:?stage|train|eval|status|collect} in
  stage) bash tools/gpu/default_model.sh stage ;;
  train) W=$W TRAIN_ARGS="--start-token $START" bash tools/gpu/default_model.sh train ;;
  eval)
    test -f $W/train.done || { echo "training has not finished"; tr '\r' '\n' < $W/train.log | tail -3; exit 1; }
    setsid nohup bash -c "source .device/env.sh; T='dotnet .device/Tern.Cli/Tern.Cli.dll'; E='--model $W/run --device cuda --dtype fp32'
      \$T eval sinks \$E --text $D/validation.txt --start-token $START > $W/sinks.txt 2>&1
      \$T eval sinks \$E --text $D/validation.txt > $W/sinks-no-start.txt 2>&1
      \$T eval ppl \$E --text $D/validation.txt --window 1024 --stride 512 > $W/ppl.txt 2>&1
      for c in 256 1024; do \$T eval stream \$E --text $D/kjv.txt --start-token $START --policy sink,window --cache \$c --streams 128 \
          --tokens-per-stream 8192 --bucket 512 -o $W/stream-\$c > $W/stream-\$c.log 2>&1; done
      echo done > $W/eval.done" > /dev/null 2>&1 < /dev/null &
    sleep 30; cat $W/sinks.txt ;;
  status)
    for f in $W/*.log $W/*.txt; do echo "== $f"; tr '\r' '\n' < $f | grep -v '^$' | tail -${LINES:-3}; done; ls $W ;;
  collect)
    tr '\r' '\n' < $W/train.log | grep -v '^$' > $W/train-clean.log
    for f in $W/stream-*.log; do tr '\r' '\n' < $f | grep -v '^$' > ${f%.log}.txt; done
    tar -czf "$OUT/sink-model.tar.gz" -C $W gpu.txt train-clean.log run/train-summary.json run/train-log.jsonl run/train-config.json \
        sinks.txt sinks-no-start.txt ppl.txt $(cd $W && ls -d stream-*)
    ls -la "$OUT" ;;
esac
