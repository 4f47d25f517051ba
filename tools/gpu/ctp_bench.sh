#!/usr/bin/env bash
# Issue 16 on the GPU machine: compress, then prompt, on the default model with the recipe's calibration and longer prompt
# training than the CPU run (bench/README.md "Compress, then prompt"). Every model of the grid gets its own prompt; then the
# transfers (across levels, and the dense prompt to every model) and the untrained control, all rows in OUT/ctp.csv. The GPU
# machine's pack has no plotting natives: draw ctp.png where the results come back (`tern eval plot OUT`).
#   D=DATA OUT=DIR MODEL=models/default bash tools/gpu/ctp_bench.sh
# DATA holds calib.txt, ptrain.txt, vsel.txt, valid.txt and kjv.txt, made from Tern's corpus (tools/corpus/build.sh C) as:
#   head -c 4000000 C/train.txt > calib.txt; tail -c +4000001 C/train.txt | head -c 12000000 > ptrain.txt
#   tail -c 200000 C/validation.txt > vsel.txt; cp C/validation.txt valid.txt; kjv.txt from data/gpu (tools/gpu/default_model.sh stage)
# Knobs: STEPS (2000),
# BATCH (8), LR (1e-2), TOKENS (prompt vectors, 100), SCORED (tokens scored per text, 65536), CALIB (sequences of 1024, 128).
set -u
D=${D:?data folder}; OUT=${OUT:?output folder}; MODEL=${MODEL:-models/default}
STEPS=${STEPS:-2000} BATCH=${BATCH:-8} LR=${LR:-1e-2} TOKENS=${TOKENS:-100} SCORED=${SCORED:-65536} CALIB=${CALIB:-128}
T=(dotnet .device/Tern.Cli/Tern.Cli.dll); [ -n "${TERN:-}" ] && T=("$TERN")
DEV=${DEVICE:-cuda}
mkdir -p "$OUT"; M=$OUT/models; mkdir -p "$M"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/ctp.log"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>/dev/null
declare -A P=([dense]=$MODEL)
ORDER="dense rtn4 gptq4 rtn3 gptq3 rtn2 gptq2 sp50 sp75 sp50q4"
C=(--calib-text "$D/calib.txt" --calib-samples "$CALIB" --calib-seq-len 1024)
compress() { # name args...
  local name=$1 t0=$SECONDS; shift
  if [ ! -f "$M/$name/compression.json" ]; then
    "${T[@]}" compress -m "$MODEL" --device $DEV "$@" -o "$M/$name" >> "$OUT/compress.log" 2>&1 || { say "compress $name failed"; return 1; }
    say "compressed $name in $((SECONDS - t0)) s"
  fi
  P[$name]=$M/$name # only models that exist are evaluated
}
train() { # name
  local t0=$SECONDS
  "${T[@]}" prompt train -m "${P[$1]}" --device $DEV --text "$D/ptrain.txt" --valid-text "$D/vsel.txt" --tokens "$TOKENS" \
    --batch-size "$BATCH" --steps "$STEPS" --warmup $((STEPS / 20)) --lr "$LR" --eval-every $((STEPS / 10)) --eval-tokens 16384 \
    -o "$OUT/prompt-$1.safetensors" > "$OUT/train-$1.log" 2>&1 || { say "prompt $1 failed"; tail -3 "$OUT/train-$1.log"; return 1; }
  say "prompt $1 trained in $((SECONDS - t0)) s"
}
evaluate() { # model prompt-label [prompt-file]; a model whose compression failed has no row
  [ -n "${P[$1]:-}" ] || return 0
  for text in valid kjv; do
    local args=(); [ $# -ge 3 ] && args=(--soft-prompt "$3")
    local line; line=$("${T[@]}" eval ppl -m "${P[$1]}" --device $DEV --text "$D/$text.txt" --max-tokens "$SCORED" --window 512 --stride 511 "${args[@]}" 2>/dev/null)
    echo "$1 $2 $text: $line" >> "$OUT/eval.log"
    local ppl nll tok rel
    ppl=$(echo "$line" | sed -n 's/.*: perplexity \([0-9.]*\) on.*/\1/p' | head -1)
    nll=$(echo "$line" | sed -n 's/.*mean NLL \([0-9.]*\) nats over \([0-9,]*\) tokens.*/\1/p' | head -1)
    tok=$(echo "$line" | sed -n 's/.*nats over \([0-9,]*\) tokens.*/\1/p' | head -1 | tr -d ,)
    rel=$(echo "$line" | sed -n 's/.*formula would report \([0-9.]*\) .*/\1/p'); [ -z "$rel" ] && rel=$ppl
    echo "$1,$text,$2,$tok,$nll,$ppl,$rel" >> "$OUT/ctp.csv"
  done
}

say "compress (calibration $CALIB x 1024 tokens)"
for b in 4 3 2; do compress rtn$b --method rtn --bits $b; done
for b in 4 3 2; do compress gptq$b --method gptq --bits $b "${C[@]}"; done
compress sp50 --method sparsegpt --sparsity 0.5 "${C[@]}"
compress sp75 --method sparsegpt --sparsity 0.75 "${C[@]}"
compress sp50q4 --method sparsegpt --sparsity 0.5 --bits 4 "${C[@]}"
echo "model,text,prompt,scored_tokens,mean_nll,perplexity,released_perplexity" > "$OUT/ctp.csv"
for m in $ORDER; do evaluate $m none; done
say "plain rows done; prompts: $STEPS steps of $BATCH sequences, lr $LR"
for m in $ORDER; do [ -n "${P[$m]:-}" ] && train $m && evaluate $m own "$OUT/prompt-$m.safetensors"; done
say "transfers"
for m in $ORDER; do [ "$m" != dense ] && [ -f "$OUT/prompt-dense.safetensors" ] && evaluate $m from-dense "$OUT/prompt-dense.safetensors"; done
[ -f "$OUT/prompt-gptq3.safetensors" ] && { evaluate gptq2 from-gptq3 "$OUT/prompt-gptq3.safetensors"; evaluate gptq4 from-gptq3 "$OUT/prompt-gptq3.safetensors"; }
[ -f "$OUT/prompt-sp50q4.safetensors" ] && { evaluate dense from-sp50q4 "$OUT/prompt-sp50q4.safetensors"; evaluate sp50 from-sp50q4 "$OUT/prompt-sp50q4.safetensors"; }
for m in dense gptq2; do # control: the untrained starting prompt (embeddings of token ids 0..n-1)
  "${T[@]}" prompt train -m "${P[$m]}" --device $DEV --text "$D/ptrain.txt" --tokens "$TOKENS" --steps 1 --warmup 1 --lr 1e-30 \
    -o "$OUT/init-$m.safetensors" > /dev/null 2>&1 && evaluate $m init "$OUT/init-$m.safetensors"
done
for m in "$M"/*/; do cp "$m/compression.json" "$OUT/compression-$(basename "$m").json" 2>/dev/null; done
rm -rf "$M"
say "done"; echo done > "$OUT/done"
