#!/usr/bin/env bash
# Issue 14: LaughingHyena on the GPU machine. Trains the MultiHyena LM (bench/configs/multihyena-14m, 14.5M parameters) and,
# for equal terms, the default Transformer's config (bench/configs/tern-14m) with the default model's recipe
# (tools/gpu/default_model.sh: 3000 steps × 32 × 1024 tokens, AdamW 1e-3, bf16 autocast); distils the MultiHyena model at
# each order of $ORDERS in one sweep (tern distill hyena --orders … --each-order); perplexity of every model on the validation split and the held-out
# KJV; then decode throughput and memory per sequence against the context length ($LENGTHS) for the distilled and
# undistilled MultiHyena and the Transformer at the same shape (dummy weights, contexts up to 16k+), and optionally at a 1.3B
# shape (BIG=1). Calls, one each (the machine goes back 30 s after a call, so the work runs in the background):
#   tools/gpu/hyena_bench.sh stage     copy data/gpu to /tmp/tern-data (carry data/gpu only, as default_model.sh stage)
#   tools/gpu/hyena_bench.sh start     needs .device: runs `all` in the background; returns at once
#   tools/gpu/hyena_bench.sh status    the logs' last lines
#   tools/gpu/hyena_bench.sh collect   summary.md + one archive of logs, reports and CSVs to $OUT
#   tools/gpu/hyena_bench.sh all       everything in the foreground (what `start` runs); every step prints what it does
#   tools/gpu/hyena_bench.sh quality   only the trainings, perplexities and distillations (the first half of `all`)
#   tools/gpu/hyena_bench.sh speed     only the decode-speed rows (dummy weights at the three shapes, no training)
#   tools/gpu/hyena_bench.sh summary   summary.md from whatever $W holds
#   tools/gpu/hyena_bench.sh largest   the goal rows in one run at 16k: 1.3B Transformer (batch 1/16/32/40), Hyena (1/16), distilled (1…512)
#   tools/gpu/hyena_bench.sh cpu       a rehearsal of `all` on the CPU: tiny run on random ids, minutes on 2 cores (Release CLI)
# Environment: STEPS (3000), SEQ (1024), BATCH (32), DEVICE (cuda), ORDERS ("2 4 8 16 32 64"), ITERS (Adam steps of the fit,
# 200), LENGTHS ("1024 2048 4096 8192 16384"), BATCHES ("1 16": memory per sequence is the difference over the batches),
# NEW (decode steps timed at each length, 64), RUNS (largest: "model batch prefill-chunk;…"), TRANSFORMER (1: train the Transformer twin too), BIG (0), SMALL (1: the 14M shapes), EVAL_TOKENS (0 = all),
# D (data), W (work folder), TERN (the CLI command).
set -uo pipefail
D=${D:-/tmp/tern-data} W=${W:-/tmp/tern-hyena} OUT=${OUT:-/tmp/tern-out}
STEPS=${STEPS:-3000} SEQ=${SEQ:-1024} BATCH=${BATCH:-32} DEVICE=${DEVICE:-cuda} ITERS=${ITERS:-200} NEW=${NEW:-64}
ORDERS=${ORDERS:-"2 4 8 16 32 64"} LENGTHS=${LENGTHS:-"1024 2048 4096 8192 16384"} BATCHES=${BATCHES:-"1 16"}
TRANSFORMER=${TRANSFORMER:-1} BIG=${BIG:-0} SMALL=${SMALL:-1} EVAL_TOKENS=${EVAL_TOKENS:-0} AUTOCAST=${AUTOCAST:-bf16}
TERN=${TERN:-dotnet .device/Tern.Cli/Tern.Cli.dll}
mkdir -p "$OUT" "$W"
say() { echo "[$(date +%H:%M:%S)] $*"; }

# A training run of config $2 into $W/$1/run (the default model's recipe); wall time in $W/$1/wall.txt.
train() {
  local name=$1 config=$2; rm -rf "$W/$name"; mkdir -p "$W/$name"
  say "training $name ($config): $STEPS steps of $BATCH × $SEQ tokens"
  local start; start=$(date +%s)
  $TERN train --config "$config" --train "$D/train.bin" --valid "$D/valid.bin" --tokenizer "$D/tokenizer" --output "$W/$name/run" \
    --device "$DEVICE" --autocast "$AUTOCAST" --steps "$STEPS" --seq-len "$SEQ" --batch-size "$BATCH" --lr 1e-3 --warmup $((STEPS / 20)) \
    --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 --eval-every $((STEPS / 12 > 0 ? STEPS / 12 : 1)) --eval-batches 5 \
    --checkpoint-every 500 --seed 1234 > "$W/$name/train.log" 2>&1
  local rc=$?
  echo $(($(date +%s) - start)) > "$W/$name/wall.txt"
  tr '\r' '\n' < "$W/$name/train.log" | grep -v '^$' | tail -2
  return $rc
}

# Perplexity of model folder $1 on the validation split and the KJV text (window SEQ, stride SEQ/2) into $2/ppl-*.txt.
perplexity() {
  local model=$1 into=$2 limit=(); [ "$EVAL_TOKENS" != 0 ] && limit=(--max-tokens "$EVAL_TOKENS")
  for text in validation kjv; do
    $TERN eval ppl --model "$model" --text "$D/$text.txt" --device "$DEVICE" --dtype fp32 --window "$SEQ" --stride $((SEQ / 2)) "${limit[@]}" 2>&1 \
      | tr '\r' '\n' | grep -v '^$' | tail -1 > "$into/ppl-$text.txt"
    say "  $(basename "$into") $text: $(cat "$into/ppl-$text.txt")"
  done
}

# A shape folder $W/shapes/$1 for dummy weights: config $2 with the context raised past the longest length and JSON edits $3.
shape() {
  local longest edits='{}'; longest=$(echo $LENGTHS | tr ' ' '\n' | sort -n | tail -1); [ $# -ge 3 ] && edits=$3
  mkdir -p "$W/shapes/$1"
  python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["max_position_embeddings"]=int(sys.argv[2]); c.update(json.loads(sys.argv[3])); json.dump(c, open(sys.argv[4], "w"), indent=1)' \
    "$2" $((longest + NEW + 64)) "$edits" "$W/shapes/$1/config.json"
}

# Decode time per token and memory at each context length: prompt L, NEW timed decode steps, every batch of BATCHES.
bench() {
  local name=$1
  for length in $LENGTHS; do
    say "bench $name: context $length, batches $BATCHES"
    $TERN bench --model "$W/shapes/$name" --dummy --device "$DEVICE" -b $(echo $BATCHES | tr ' ' ',') -p "$length" -n "$NEW" \
      --label "$name" -o "$W/bench.csv" > "$W/bench-run.txt" 2>&1 || say "  $name at $length failed (out of memory?)"
    grep -v '^appended' "$W/bench-run.txt" | tail -n +3
    sed -n "s/^state per sequence after [0-9]* tokens: \([0-9.]*\) MB/$name,$length,\1/p" "$W/bench-run.txt" >> "$W/state.csv"
  done
}

# The trainings, their perplexities and the distillation at every order of ORDERS (the quality rows of the summary).
quality() {
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2> /dev/null || echo "$DEVICE" > "$W/gpu.txt"
  train hyena bench/configs/multihyena-14m/config.json || return 1
  [ "$TRANSFORMER" = 1 ] && { train transformer bench/configs/tern-14m/config.json || return 1; }
  for name in hyena transformer; do [ -d "$W/$name/run" ] && { say "perplexity: $name"; perplexity "$W/$name/run" "$W/$name"; }; done
  # One sweep over every order (each order warm-started from the previous one, so no filter's error rises with the order), a
  # model folder per order (--each-order).
  say "distilling: one sweep over orders $ORDERS"; rm -rf "$W/distilled"
  $TERN distill hyena --model "$W/hyena/run" --out "$W/distilled" --orders "$(echo $ORDERS | tr ' ' ',')" --each-order --iterations "$ITERS" 2>&1 \
    | tee "$W/distill.log" | grep -E '^layer [0-9]+/|^wrote' || return 1
  for d in $ORDERS; do
    mkdir -p "$W/distilled-$d"; perplexity "$W/distilled/order-$d" "$W/distilled-$d"
  done
}

# Dummy-weight shape folders for the decode rows: the 14M shapes (unless SMALL=0) and, with BIG=1, a 1.3B shape of each
# (GPT-3 XL's width and depth).
shapes() {
  rm -rf "$W/shapes"
  if [ "$SMALL" = 1 ]; then
    shape hyena bench/configs/multihyena-14m/config.json
    shape distilled bench/configs/multihyena-14m/config.json '{"distilled": {"modes": 8}}'
    shape transformer bench/configs/tern-14m/config.json
  fi
  if [ "$BIG" = 1 ]; then
    local hyena='"hidden_size": 2048, "num_hidden_layers": 24, "vocab_size": 50304, "num_heads": 256, "intermediate_size": 8192'
    shape hyena-1.3b bench/configs/multihyena-14m/config.json "{$hyena}"
    shape distilled-1.3b bench/configs/multihyena-14m/config.json "{$hyena, \"distilled\": {\"modes\": 8}}"
    shape transformer-1.3b bench/configs/tern-14m/config.json \
      '{"hidden_size": 2048, "num_hidden_layers": 24, "vocab_size": 50304, "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 5504}'
  fi
}

summary() {
  python3 - "$W" "$ORDERS" "$BATCHES" > "$W/summary.md" << 'EOF'
import csv, json, os, re, sys
w, orders, batches = sys.argv[1], sys.argv[2].split(), [int(b) for b in sys.argv[3].split()]
def ppl(folder, text):
    try: m = re.search(r"perplexity ([0-9.]+)", open(os.path.join(w, folder, f"ppl-{text}.txt")).read()); return m.group(1) if m else "?"
    except OSError: return "-"
print("# LaughingHyena: MultiHyena vs Transformer, distilled at each order\n")
print("| model | validation ppl | KJV ppl | worst filter error | train wall s |\n|---|---|---|---|---|")
for name in ["transformer", "hyena"] + [f"distilled-{d}" for d in orders]:
    if not os.path.isdir(os.path.join(w, name)): continue
    err = "-"
    report = os.path.join(w, "distilled", "order-" + name.split("-")[1], "modal.json") if name.startswith("distilled-") else ""
    if os.path.exists(report): err = f'{max(l["max_relative_error"] for l in json.load(open(report))["layers"]):.2e}'
    wall = open(os.path.join(w, name, "wall.txt")).read().strip() if os.path.exists(os.path.join(w, name, "wall.txt")) else "-"
    print(f"| {name} | {ppl(name, 'validation')} | {ppl(name, 'kjv')} | {err} | {wall} |")
rows = list(csv.DictReader(open(os.path.join(w, "bench.csv")))) if os.path.exists(os.path.join(w, "bench.csv")) else []
if rows:
    k = {c.lower(): c for c in rows[0]}
    col = lambda frag: next(v for c, v in k.items() if frag in c)
    print("\n## Decode per token against the context (dummy weights)\n")
    state = {}
    if os.path.exists(os.path.join(w, "state.csv")):
        for label, length, mb in csv.reader(open(os.path.join(w, "state.csv"))): state[(label, int(length))] = mb
    print("| model | context | " + " | ".join(f"ms/token b={b}" for b in batches) + " | tok/s at b=" + str(batches[-1])
          + " | state MB per sequence | device MB per sequence (with prefill transients) |")
    print("|---|---|" + "---|" * (len(batches) + 3))
    table = {}
    for r in rows: table.setdefault((r[col("label")], int(r[col("prompt")])), {})[int(r[col("batch")])] = r
    for (label, length), by in sorted(table.items()):
        ms = [by[b][col("decode_ms")] if b in by else "-" for b in batches]
        tps = by[batches[-1]][col("decode_tok")] if batches[-1] in by else "-"
        mem = "-"
        if len(batches) > 1 and all(b in by for b in (batches[0], batches[-1])):
            mem = f'{(float(by[batches[-1]][col("device_mem")]) - float(by[batches[0]][col("device_mem")])) * 1e3 / (batches[-1] - batches[0]):.1f}'
        print(f"| {label} | {length} | " + " | ".join(ms) + f" | {tps} | {state.get((label, length), '-')} | {mem} |")
EOF
  cat "$W/summary.md"
}

case ${1:?stage|start|status|collect|all|quality|speed|summary|largest|cpu} in
  stage) bash tools/gpu/default_model.sh stage ;;
  start)
    setsid nohup bash -c "source .device/env.sh; bash tools/gpu/hyena_bench.sh all > $W/bench.log 2>&1; echo done > $W/bench.done" \
      > /dev/null 2>&1 < /dev/null &
    sleep 30; tail -5 "$W/bench.log" ;;
  speed) # the decode-speed rows only (dummy weights, no training): shapes, then bench and summary
    rm -f "$W/bench.csv" "$W/state.csv"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2> /dev/null || echo "$DEVICE" > "$W/gpu.txt"
    shapes
    for name in transformer-1.3b distilled-1.3b hyena-1.3b transformer distilled hyena; do [ -d "$W/shapes/$name" ] && bench "$name"; done
    summary ;;
  largest) # issue 14's goal rows in one run at 16k: every model at batch 1 and at its largest batch. Prefills are chunked (1024
    # tokens) for the Transformer too, so its batch is bounded by its cache, not by a whole-prompt prefill's activations.
    mkdir -p "$W"; rm -f "$W/largest.csv" "$W/largest-state.csv"; LENGTHS=16384; SMALL=0; BIG=1; shapes
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2> /dev/null || echo "$DEVICE" > "$W/gpu.txt"
    IFS=';' read -ra runs <<< "${RUNS:-transformer-1.3b 1 1024;transformer-1.3b 16 1024;transformer-1.3b 32 1024;transformer-1.3b 40 1024;hyena-1.3b 1 0;hyena-1.3b 16 0;distilled-1.3b 1 1024;distilled-1.3b 16 1024;distilled-1.3b 64 1024;distilled-1.3b 128 1024;distilled-1.3b 256 256}"
    for run in "${runs[@]}"; do
      set -- $run
      say "largest: $1 at 16384, batch $2 (prefill chunk $3)"
      timeout 300 $TERN bench --model "$W/shapes/$1" --dummy --device "$DEVICE" -b "$2" -p 16384 -n "$NEW" --prefill-chunk "$3" --label "$1" \
        -o "$W/largest.csv" > "$W/largest-run.txt" 2>&1 || say "  $1 batch $2: exit $? (out of memory or timeout)"
      tr '\r' '\n' < "$W/largest-run.txt" | grep -E '^ +[0-9]+ +16384|state per|memory|rror' | cut -c1-240
      sed -n "s/^state per sequence after [0-9]* tokens: \([0-9.]*\) MB/$1,16384,\1/p" "$W/largest-run.txt" >> "$W/largest-state.csv"
    done
    cat "$W/largest.csv" ;;
  status)
    tail -"${LINES:-6}" "$W/bench.log"
    for f in "$W"/*/train.log; do [ -f "$f" ] && { echo "== $f"; tr '\r' '\n' < "$f" | grep -v '^$' | tail -2; }; done ;;
  collect)
    test -f "$W/bench.done" || { echo "the bench has not finished"; tail -3 "$W/bench.log"; }
    cp "$W/summary.md" "$OUT/" 2> /dev/null
    (cd "$W" && tar -czf "$OUT/hyena-results.tar.gz" --exclude='*.safetensors' --exclude='checkpoint-*' summary.md quality.log bench.log bench.csv state.csv gpu.txt \
      */run/train-log.jsonl */run/train-summary.json */run/config.json */wall.txt */ppl-*.txt distilled/order-*/modal.json \
      distill.log shapes 2> /dev/null)
    ls -la "$OUT" ;;
  quality) quality ;;
  summary) summary ;;
  all)
    rm -f "$W/bench.done" "$W/bench.csv" "$W/state.csv"
    quality || exit 1
    shapes
    for name in transformer-1.3b distilled-1.3b hyena-1.3b transformer distilled hyena; do [ -d "$W/shapes/$name" ] && bench "$name"; done
    summary ;;
  cpu)
    C=/tmp/tern-hyena-cpu; rm -rf $C; mkdir -p $C/data/tokenizer
    python3 -c "
import random, struct
for name, n, seed in (('train', 50000, 1), ('valid', 5000, 2)):
    r = random.Random(seed)
    open('$C/data/' + name + '.bin', 'wb').write(struct.pack('<%dH' % n, *(r.randrange(8192) for _ in range(n))))"
    cp models/default/tokenizer*.json $C/data/tokenizer/
    head -c 20000 docs/state-of-work.md > $C/data/validation.txt; head -c 20000 README.md > $C/data/kjv.txt
    D=$C/data W=$C/work DEVICE=cpu STEPS=${STEPS_CPU:-4} SEQ=64 BATCH=2 ORDERS="2 4" ITERS=10 LENGTHS="64 128" BATCHES="1 2" NEW=4 \
      TRANSFORMER=0 AUTOCAST=off EVAL_TOKENS=256 TERN=src/Tern.Cli/bin/Release/net10.0/Tern.Cli bash tools/gpu/hyena_bench.sh all ;;
esac
