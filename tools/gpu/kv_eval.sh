#!/usr/bin/env bash
# Issue 4 on the GPU machine: the KV-policy evaluations on the shipped default model and the policy benchmarks on
# Llama-2-7B-shape dummy weights. Carry .device and data/gpu-eval (validation.txt, kjv.txt.xz). Steps, one call each:
#   tools/gpu/kv_eval.sh start     unpack the texts, start the evaluations in the background
#   tools/gpu/kv_eval.sh status    their progress
#   tools/gpu/kv_eval.sh bench     sink vs window-recompute latency by cache size
#   tools/gpu/kv_eval.sh bench-h2o h2o at 20% vs the full cache on a long generation (prompt 2048 + 2048 new)
#   tools/gpu/kv_eval.sh bench-amortised  eviction every 64 tokens; the cost of H2O's score tracking
#   tools/gpu/kv_eval.sh bench-h2o-chunked  the same with a chunked prefill, at growing batch sizes
#   tools/gpu/kv_eval.sh collect   results (CSVs, logs) to $OUT as one archive; plots are drawn here with `tern eval plot`
set -uo pipefail
W=/tmp/tern-kv; OUT=${OUT:-/tmp/tern-out}; mkdir -p "$W" "$OUT"
source .device/env.sh
tern() { dotnet .device/Tern.Cli/Tern.Cli.dll "$@"; }
case ${1:?start|status|bench|collect} in
  stage-model)  # a first call carrying the model only (.device and the model together pass the 64 MiB a call carries)
    mkdir -p /tmp/tern-model && cp -r models/default /tmp/tern-model/ && ls /tmp/tern-model/default ;;
  start)
    cp data/gpu-eval/validation.txt $W/ && xz -dc data/gpu-eval/kjv.txt.xz > $W/kjv.txt
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $W/gpu.txt
    setsid nohup bash -c "source .device/env.sh; T='dotnet .device/Tern.Cli/Tern.Cli.dll'; E='--model ${MODEL:-models/default} --device cuda --dtype fp32'
      \$T eval stream \$E --text $W/kjv.txt --policy sink,window,full,window-recompute --cache 256,1024 --streams 128 \
          --full-tokens 4096 --recompute-tokens 2048 --bucket 512 -o $W/stream > $W/stream.log 2>&1
      \$T eval budget \$E --text $W/validation.txt --policy window,sink,h2o,h2o:4 --budgets 1,0.5,0.2,0.1,0.05 \
          --sequences 64 --length 1024 -o $W/budget > $W/budget.log 2>&1
      \$T eval stream \$E --text $W/kjv.txt --policy full,full:8,full:4 --streams 64 --tokens-per-stream 1024 --bucket 256 -o $W/kvbits > $W/kvbits.log 2>&1
      \$T eval choice \$E --text $W/validation.txt $W/kjv.txt --policy sink,h2o --budgets 1,0.5,0.2,0.1 --items 200 -o $W/choice > $W/choice.log 2>&1
      echo done > $W/eval.done" > /dev/null 2>&1 < /dev/null &
    sleep 20; tr '\r' '\n' < $W/stream.log | grep -v '^$' | tail -3 ;;
  start-rest)  # the evaluations a first session did not reach
    cp data/gpu-eval/validation.txt $W/ && xz -dc data/gpu-eval/kjv.txt.xz > $W/kjv.txt
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $W/gpu.txt
    setsid nohup bash -c "source .device/env.sh; T='dotnet .device/Tern.Cli/Tern.Cli.dll'; E='--model ${MODEL:-models/default} --device cuda --dtype fp32'
      \$T eval stream \$E --text $W/kjv.txt --policy full,full:8,full:4 --streams 64 --tokens-per-stream 1024 --bucket 256 -o $W/kvbits > $W/kvbits.log 2>&1
      \$T eval choice \$E --text $W/validation.txt $W/kjv.txt --policy sink,h2o --budgets 1,0.5,0.2,0.1 --items 200 -o $W/choice > $W/choice.log 2>&1
      echo done > $W/eval.done" > /dev/null 2>&1 < /dev/null &
    sleep 5; ls $W ;;
  bench-h2o)  # run after the evaluations: it needs the whole card
    M="--model bench/configs/llama2-7b-8k --dummy --device cuda --dtype bf16 -o $W/bench.csv --prompt 2048 --new-tokens 2048"
    tern bench $M --batch 24 --label "full long" | tail -2
    for b in 24 64; do tern bench $M --batch $b --kv-policy h2o --kv-budget 0.2 --label "h2o 20% long" | tail -2; done ;;
  bench-sink)  # per-token latency over 128 tokens: sink evicting every 64 / every step, and re-computation
    M="--model bench/configs/llama2-7b-8k --dummy --device cuda --dtype bf16 -o $W/bench.csv"
    for c in 256 1024 4096; do  # 128 new tokens: two amortised evictions fall inside the measured steps
      tern bench $M --prompt $c --new-tokens 128 --kv-policy sink --kv-budget $c --kv-evict-every 64 --label "sink 128 tokens" | tail -1
      tern bench $M --prompt $c --new-tokens 128 --kv-policy sink --kv-budget $c --label "sink 128 tokens" | tail -1
      tern bench $M --prompt $c --new-tokens 128 --kv-policy window-recompute --kv-budget $c --label "sink 128 tokens" | tail -1
    done ;;
  bench-amortised)  # eviction every 64 tokens vs every step; H2O's score tracking at a budget that never evicts vs the full cache
    M="--model bench/configs/llama2-7b-8k --dummy --device cuda --dtype bf16 -o $W/bench.csv"
    tern bench $M --prompt 2048 --new-tokens 2048 --batch 24 --kv-policy h2o --kv-budget 0.2 --kv-evict-every 64 --label "h2o 20% long evict-every 64" | tail -2
    tern bench $M --prompt 1024 --new-tokens 512 --batch 8 --kv-policy h2o --kv-budget 1.0 --label "h2o score tracking" | tail -2
    tern bench $M --prompt 1024 --new-tokens 512 --batch 8 --no-cuda-graphs --label "h2o score tracking baseline" | tail -2 ;;
  bench-h2o-chunked)  # h2o 20% with amortised eviction and a chunked prefill: the cache holds budget + one chunk, so batches grow
    M="--model bench/configs/llama2-7b-8k --dummy --device cuda --dtype bf16 -o $W/bench.csv --prompt 2048 --new-tokens 2048"
    for b in ${BATCHES:-24 64 96}; do
      tern bench $M --batch $b --kv-policy h2o --kv-budget 0.2 --kv-evict-every 64 --prefill-chunk 256 --label "h2o 20% long" | tail -2
    done ;;
  status)
    for f in $W/*.log; do echo "== $f"; tr '\r' '\n' < $f | grep -v '^$' | tail -${LINES:-2}; done; ls $W ;;
  bench)
    M="--model bench/configs/llama2-7b-8k --dummy --device cuda --dtype bf16 -o $W/bench.csv"
    for c in 256 512 1024 2048 4096; do
      tern bench $M --prompt $c --new-tokens 16 --kv-policy sink --kv-budget $c --label "sink vs recompute" | tail -2
      tern bench $M --prompt $c --new-tokens 16 --kv-policy window-recompute --kv-budget $c --label "sink vs recompute" | tail -2
    done ;;
  collect)
    cp $W/*.log $W/gpu.txt $OUT/ 2>/dev/null
    tar -czf $OUT/kv-results.tar.gz -C $W $(cd $W && ls -d stream budget kvbits choice bench.csv gpu.txt *.log 2>/dev/null)
    ls -la $OUT ;;
esac
