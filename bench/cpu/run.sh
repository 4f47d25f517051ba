#!/usr/bin/env bash
# Tern against LLamaSharp 0.30 (llama.cpp inside) on the same weights, on this machine's CPU (issue 19, item 4): the model's
# SiLU twin (llama.cpp's llama graph hard-codes SiLU, so a ReLU model is exported with SiLU: the same weights and work),
# written as GGUF by `tern export`; Tern timed by `tern bench`, llama.cpp by bench/cpu/LlamaCppBench, one after the other in
# one run, batch 1 and 8, the pair repeated REPEAT times, alternating (a shared 2-core VM drifts by 2× between minutes): the
# table gives each row's median. results.csv and results.md in OUT. Run it on a quiet machine (no builds alongside).
#   bench/cpu/run.sh        MODEL (models/default), OUT (bench/cpu-DATE), PROMPT (128), NEW (128), THREADS (nproc), REPEAT (3),
#                           MKL_ROW (1: also Tern fp32 with MKL's sgemv, TERN_CPU_GEMV=mkl, where the own kernel is the default)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
MODEL=${MODEL:-models/default} OUT=${OUT:-bench/cpu-$(date -u +%F)} PROMPT=${PROMPT:-128} NEW=${NEW:-128} THREADS=${THREADS:-$(nproc)}
BATCHES=${BATCHES:-1,8} REPEAT=${REPEAT:-3}
mkdir -p "$OUT"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
dotnet build src/Tern.Cli -c Release -v q -nologo > /dev/null
dotnet build bench/cpu/LlamaCppBench -c Release -v q -nologo > /dev/null
tern() { dotnet src/Tern.Cli/bin/Release/net10.0/Tern.Cli.dll "$@"; }
twin=$work/twin; mkdir -p "$twin"; cp "$MODEL"/* "$twin"/
python3 - "$twin/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c["hidden_act"] = "silu"; json.dump(c, open(p, "w"), indent=2)
PY
tern export --model "$twin" --format gguf --dtype fp32 -o "$work/model-f32.gguf" 2>/dev/null
tern export --model "$twin" --format gguf --dtype fp16 -o "$work/model-f16.gguf" 2>/dev/null
echo "engine,weights,threads,batch,prompt,new_tokens,prefill_ms,decode_ms_per_step,decode_tok_s" > "$OUT/results.csv"
for run in $(seq "$REPEAT"); do
  for variant in fp32 bf16 $([ "${MKL_ROW:-0}" = 1 ] && echo fp32-mkl); do
    rm -f "$work/tern.csv"
    TERN_CPU_GEMV=$([ $variant = fp32-mkl ] && echo mkl || echo "${TERN_CPU_GEMV:-}") \
      tern bench --model "$twin" --device cpu --dtype ${variant%-mkl} --batch "$BATCHES" --prompt "$PROMPT" --new-tokens "$NEW" -o "$work/tern.csv" > /dev/null 2>&1
    python3 - "$work/tern.csv" "$variant" "$THREADS" >> "$OUT/results.csv" <<'PY'
import csv, sys
engine = "tern (MKL sgemv)" if sys.argv[2].endswith("-mkl") else "tern"
for r in csv.DictReader(open(sys.argv[1])):
    print(",".join([engine, sys.argv[2].removesuffix("-mkl"), sys.argv[3], r["batch"], r["prompt"], r["new_tokens"], r["prefill_ms"], r["decode_ms_per_step"], r["decode_tok_s"]]))
PY
  done
  for gguf in f32 f16; do
    dotnet bench/cpu/LlamaCppBench/bin/Release/net10.0/LlamaCppBench.dll "$work/model-$gguf.gguf" "$THREADS" "$PROMPT" "$NEW" "$BATCHES" \
      | sed "s/model-$gguf.gguf/gguf $gguf/" >> "$OUT/results.csv"
  done
done
python3 - "$OUT/results.csv" "$MODEL" > "$OUT/results.md" <<'PY'
import csv, sys, platform, datetime, statistics
rows = list(csv.DictReader(open(sys.argv[1])))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
runs = {}
for r in rows: runs.setdefault((r["engine"], r["weights"], int(r["batch"])), []).append(r)
print(f"{sys.argv[2]} (SiLU twin), {cpu}, {rows[0]['threads']} threads, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; prompt {rows[0]['prompt']}, "
      f"{rows[0]['new_tokens']} new tokens; medians of {len(next(iter(runs.values())))} alternating runs (min–max of decode tok/s in brackets).\n")
print("| engine | weights | batch | prefill tok/s | decode ms/step | decode tok/s |")
print("|---|---|---|---|---|---|")
for (engine, weights, batch), rs in runs.items():
    prefill = statistics.median(batch * int(r["prompt"]) * 1000 / float(r["prefill_ms"]) for r in rs)
    step = statistics.median(float(r["decode_ms_per_step"]) for r in rs)
    tps = [float(r["decode_tok_s"]) for r in rs]
    print(f"| {engine} | {weights} | {batch} | {prefill:.0f} | {step:.2f} | {statistics.median(tps):.1f} ({min(tps):.0f}–{max(tps):.0f}) |")
PY
cat "$OUT/results.md"
