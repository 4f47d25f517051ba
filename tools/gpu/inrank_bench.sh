#!/usr/bin/env bash
# Issue 15: full-rank vs InRank vs a fixed-rank control at InRank's mean rank — same machine, same token budget, the default
# model's recipe (tools/gpu/default_model.sh) on a 29.9M-parameter model of its family (bench/configs/tern-30m: Llama, relu,
# hidden 512, 8 layers, intermediate 1408; every MLP linear 1408×512, full rank 512, InRank's Rmax 256, cap 156 with b = 100).
# Calls, one each (the machine goes back 30 s after a call, so the work runs in the background):
#   tools/gpu/inrank_bench.sh stage     copy data/gpu to /tmp/tern-data (carry data/gpu only, as default_model.sh stage)
#   tools/gpu/inrank_bench.sh start     needs .device: runs `all` in the background; returns at once
#   tools/gpu/inrank_bench.sh status    the logs' last lines
#   tools/gpu/inrank_bench.sh collect   summary.md + one archive of the logs, configs and plots' data to $OUT
#   tools/gpu/inrank_bench.sh fixed R [NAME]  one fixed-rank run at rank R (B·A for every MLP linear; INRANK_ARGS apply, e.g.
#                                       --inrank-init-scale) and its perplexities, in $W/NAME (default fixed-R; NAME fixed: the
#                                       summary's control row, e.g. at $W/control-rank.txt after an `all` with CONTROL=0)
#   tools/gpu/inrank_bench.sh full      the full-rank run alone and its perplexities, in $W/full (after an `all` with FULL=0 in the
#                                       same $W: the summary is written again with it)
#   tools/gpu/inrank_bench.sh all       the whole comparison in the foreground: three trainings, perplexities, the dense
#                                       export (Tern and transformers), summary.md (what `start` runs)
# Environment: STEPS (3000), SEQ (1024), BATCH (32), DEVICE (cuda), STAGE1 (1040 optimizer steps of rank discovery: the
# release's 130 steps × 8 micro-batches = 1,040 forward passes, ≈ 33 checks at its warm-up 200 / every 25), INRANK_ARGS
# (more --inrank-* flags), CONTROL (1: train the fixed-rank control too), FULL (1: train the full-rank run too), FULL_FROM (a work
# folder of an earlier `all` on this machine whose full-rank run and perplexities this one reuses instead), CONFIG, D (data), W (work folder), TERN (the CLI command), EVAL_TOKENS (0 = whole texts).
# A CPU smoke test of the same commands: see bench/README.md, "InRank".
set -uo pipefail
D=${D:-/tmp/tern-data} W=${W:-/tmp/tern-inrank} OUT=${OUT:-/tmp/tern-out}
CONFIG=${CONFIG:-bench/configs/tern-30m/config.json}
STEPS=${STEPS:-3000} SEQ=${SEQ:-1024} BATCH=${BATCH:-32} DEVICE=${DEVICE:-cuda} STAGE1=${STAGE1:-1040} EVAL_TOKENS=${EVAL_TOKENS:-0}
INRANK_ARGS=${INRANK_ARGS:-} CONTROL=${CONTROL:-1} FULL=${FULL:-1} FULL_FROM=${FULL_FROM:-}
TERN=${TERN:-dotnet .device/Tern.Cli/Tern.Cli.dll}
# The packed runtime (tools/gpu/pack.sh) when the CLI is the packed one: a bare machine has no dotnet on its PATH.
[[ $TERN == *.device/* && -f .device/env.sh ]] && source .device/env.sh
mkdir -p "$OUT" "$W"

# One training run in $W/$1/run; wall time in $W/$1/wall.txt, peak GPU memory (nvidia-smi, MiB, sampled every 200 ms: the
# caching allocator's reservation, the process's whole footprint) in $W/$1/peak-mib.txt.
train() {
  local name=$1; shift
  rm -rf "$W/$name"; mkdir -p "$W/$name"
  local sampler=
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$W/$name/memory.csv" & sampler=$!
  fi
  local start; start=$(date +%s.%N)
  $TERN train --config "$CONFIG" --train "$D/train.bin" --valid "$D/valid.bin" --tokenizer "$D/tokenizer" --output "$W/$name/run" \
    --device "$DEVICE" --steps "$STEPS" --seq-len "$SEQ" --batch-size "$BATCH" --lr 1e-3 --warmup 150 --min-lr-ratio 0.1 \
    --weight-decay 0.1 --grad-clip 1.0 --eval-every 250 --eval-batches 5 --checkpoint-every 500 --seed 1234 "$@" \
    > "$W/$name/train.log" 2>&1
  local rc=$?
  echo "$(date +%s.%N) $start" | awk '{printf "%.1f\n", $1 - $2}' > "$W/$name/wall.txt"
  if [ -n "$sampler" ]; then
    kill "$sampler"; wait "$sampler" 2> /dev/null
    sort -n "$W/$name/memory.csv" | tail -1 > "$W/$name/peak-mib.txt"
  fi
  tr '\r' '\n' < "$W/$name/train.log" | grep -v '^$' | tail -3
  return $rc
}

# Perplexity of a model folder on the validation split and the held-out KJV text (tern eval ppl, window 1024, stride 512).
perplexity() {
  local model=$1 into=$2
  local limit=(); [ "$EVAL_TOKENS" != 0 ] && limit=(--max-tokens "$EVAL_TOKENS")
  for text in validation kjv; do
    $TERN eval ppl --model "$model" --text "$D/$text.txt" --device "$DEVICE" --dtype fp32 --window "$SEQ" --stride $((SEQ / 2)) "${limit[@]}" 2>&1 \
      | tr '\r' '\n' | grep -v '^$' | tail -1 > "$into/ppl-$text.txt"
    cat "$into/ppl-$text.txt"
  done
}

# The card the runs use, for the summary.
record_device() { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2> /dev/null || echo "$DEVICE" > "$W/gpu.txt"; }

# Perplexities of every run in $W that has none yet (train() starts each run's folder afresh).
perplexities() {
  for name in full inrank fixed; do
    [ -d "$W/$name/run" ] && [ ! -f "$W/$name/ppl-validation.txt" ] || continue
    echo "== perplexity: $name"; perplexity "$W/$name/run" "$W/$name"
  done
}

# summary.md once both the full-rank and the InRank run are there.
summarize() { [ -d "$W/full/run" ] && [ -d "$W/inrank/run" ] && python3 tools/gpu/inrank_summary.py "$W" > "$W/summary.md" && cat "$W/summary.md"; return 0; }

case ${1:?stage|start|status|collect|fixed|full|all} in
  stage) bash tools/gpu/default_model.sh stage ;;
  start)
    setsid nohup bash -c "bash tools/gpu/inrank_bench.sh all > $W/bench.log 2>&1" \
      > /dev/null 2>&1 < /dev/null &
    sleep 30; tail -5 "$W/bench.log" ;;
  fixed)
    # One fixed-rank run at RANK and its perplexities (e.g. the full rank 512: the factored parametrisation alone).
    rank=${2:?rank} name=${3:-fixed-$2}
    record_device
    echo "== fixed rank $rank $INRANK_ARGS"; train "$name" --low-rank "$rank" $INRANK_ARGS || exit 1
    echo "== perplexity: $name"; perplexity "$W/$name/run" "$W/$name"; summarize ;;
  full)
    record_device
    echo "== full rank"; train full || exit 1
    perplexities; summarize ;;
  status)
    for f in "$W"/bench.log "$W"/*/train.log; do [ -f "$f" ] && { echo "== $f"; tr '\r' '\n' < "$f" | grep -v '^$' | tail -"${LINES:-3}"; }; done
    ls "$W" ;;
  all)
    rm -f "$W/bench.done"
    record_device
    if [ -n "$FULL_FROM" ]; then rm -rf "$W/full" && cp -r "$FULL_FROM/full" "$W/full" || exit 1
    elif [ "$FULL" = 1 ]; then echo "== full rank"; train full || exit 1; fi
    echo "== InRank"; train inrank --inrank --inrank-stage1-steps "$STAGE1" $INRANK_ARGS || exit 1
    # The control: one rank for every MLP linear (as the release's fixed-rank baseline), InRank's mean final rank.
    rank=$(python3 -c 'import json,sys; l=json.load(open(sys.argv[1]))["low_rank"]["linears"]; print(round(sum(v["rank"] for v in l.values())/len(l)))' \
      "$W/inrank/run/config.json") || exit 1
    echo "$rank" > "$W/control-rank.txt"
    # Of the same variant as the InRank run (W0 + B·A when INRANK_ARGS ask for the original one).
    variant=$(grep -o -- '--inrank-variant [a-z]*' <<< "$INRANK_ARGS")
    if [ "$CONTROL" = 1 ]; then echo "== fixed rank $rank"; train fixed --low-rank "$rank" $variant || exit 1; fi
    perplexities
    # Item 3: the low-rank model multiplied back into an ordinary HF folder gives the same perplexity, and transformers loads it.
    rm -rf "$W/inrank/dense"
    $TERN export --model "$W/inrank/run" --output "$W/inrank/dense" --dense > /dev/null || exit 1
    mkdir -p "$W/inrank/dense-eval"; echo "== perplexity: InRank exported dense"; perplexity "$W/inrank/dense" "$W/inrank/dense-eval"
    python3 - "$W/inrank/dense" "$D/validation.txt" > "$W/inrank/transformers.txt" 2>&1 <<'PY' || echo "transformers check failed (see $W/inrank/transformers.txt)"
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = AutoTokenizer.from_pretrained(sys.argv[1])(open(sys.argv[2]).read()[:20000], return_tensors="pt").input_ids[:, :1024]
with torch.no_grad(): loss = model(ids, labels=ids).loss.item()
print(f"transformers loads the dense export: first {ids.shape[1]} validation tokens, loss {loss:.4f}, perplexity {torch.exp(torch.tensor(loss)).item():.3f}")
PY
    cat "$W/inrank/transformers.txt"
    summarize
    echo done > "$W/bench.done" ;;
  collect)
    test -f "$W/bench.done" || { echo "the comparison has not finished"; tail -5 "$W/bench.log"; exit 1; }
    for name in full inrank fixed; do [ -f "$W/$name/train.log" ] && tr '\r' '\n' < "$W/$name/train.log" | grep -v '^$' > "$W/$name/train-clean.log"; done
    cp "$W/summary.md" "$OUT/"
    # bench.log exists when `start` ran the comparison (not when `all` ran in the foreground).
    tar -czf "$OUT/inrank-bench.tar.gz" -C "$W" gpu.txt summary.md $(cd "$W" && ls bench.log 2> /dev/null) control-rank.txt inrank/transformers.txt \
      $(cd "$W" && ls -d */train-clean.log */wall.txt */peak-mib.txt */ppl-*.txt inrank/dense-eval/ppl-*.txt 2> /dev/null) \
      $(cd "$W" && ls -d */run/train-log.jsonl */run/train-summary.json */run/train-config.json */run/config.json inrank/run/inrank-log.jsonl)
    ls -la "$OUT" ;;
esac
