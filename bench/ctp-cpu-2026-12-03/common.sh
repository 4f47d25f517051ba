T=/tmp/ctp/bin/Tern.Cli
D=/tmp/ctp
OUT=${OUT:-/tmp/ctp/out}
STEPS=${STEPS:-200}
LR=${LR:-1e-3}
mkdir -p $OUT
declare -A PATHS=([dense]=/work/wt-ctp/models/default [rtn4]=$D/m-rtn4 [gptq4]=$D/m-gptq4 [rtn3]=$D/m-rtn3 [gptq3]=$D/m-gptq3 [rtn2]=$D/m-rtn2 [gptq2]=$D/m-gptq2 [sp50]=$D/m-sp50 [sp75]=$D/m-sp75 [sp50q4]=$D/m-sp50q4)
ORDER="dense rtn4 gptq4 rtn3 gptq3 rtn2 gptq2 sp50 sp75 sp50q4"
train() { # name
  $T prompt train -m ${PATHS[$1]} --device cpu --text $D/ptrain.txt --valid-text $D/vsel.txt --tokens 100 --seq-len 512 \
     --steps $STEPS --warmup $((STEPS / 10)) --lr $LR --eval-every 50 --eval-tokens 4096 -o $OUT/prompt-$1.safetensors > $OUT/train-$1.log 2>&1
}
evaluate() { # model prompt-label [prompt-file]
  for text in valid kjv; do
    args=(); [ $# -ge 3 ] && args=(--soft-prompt $3)
    line=$($T eval ppl -m ${PATHS[$1]} --device cpu --text $D/$text.txt --max-tokens 16353 --window 512 --stride 511 "${args[@]}" 2>/dev/null)
    echo "$1 $2 $text: $line" >> $OUT/eval.log
    ppl=$(echo "$line" | sed -n 's/.*: perplexity \([0-9.]*\) on.*/\1/p' | head -1)
    nll=$(echo "$line" | sed -n 's/.*mean NLL \([0-9.]*\) nats over \([0-9,]*\) tokens.*/\1/p' | head -1)
    tok=$(echo "$line" | sed -n 's/.*nats over \([0-9,]*\) tokens.*/\1/p' | head -1 | tr -d ,)
    rel=$(echo "$line" | sed -n 's/.*formula would report \([0-9.]*\) .*/\1/p'); [ -z "$rel" ] && rel=$ppl
    echo "$1,$text,$2,$tok,$nll,$ppl,$rel" >> $OUT/ctp.csv
  done
}
