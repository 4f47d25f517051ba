#!/usr/bin/env bash
# Issue 12 (one execution core) on the GPU machine. Carry .device made by tools/gpu/pack.sh (models/ moved aside, see
# docs/state-of-work.md); one call each, from the repository root there, each well under the 10-minute call limit:
#   tools/gpu/core_bench.sh tests              the whole GPU suite (HF parity, policy and offload contracts, compositions)
#   tools/gpu/core_bench.sh sink [CACHES]      Llama-2-7B shape, bf16, batch 1, prompt = cache size, SINK_NEW (4096) new tokens: sink
#                                              (CUDA graphs; eviction every 64 and every step) against window re-computation,
#                                              (128 new tokens: its cost a step is constant), and the full cache at that length (128)
#   tools/gpu/core_bench.sh h2o-offload GEN FULL_POLICY H2O_POLICY
#                                              OPT-30B shape, fp16 dummy weights, --gpu-mem 16GB, CPU 100 GB, prompt 512 + GEN:
#                                              the full cache against h2o 20% (policies planned here with `tern offload plan
#                                              ... --profile bench/offload-h200-2026-11-27/second-run/hardware-profile.json [--kv-policy h2o
#                                              --kv-budget 0.2]`: OR-Tools is not packed). MEASURE_STEPS=N: run the prefill and N
#                                              decode steps, project the rest (`tern bench --measure-steps`); step times in
#                                              $OUT/offload-steps.csv. FULL_POLICY may list several policies, `;`-separated.
#   tools/gpu/core_bench.sh serve MODEL        `tern bench serve` (1 and 64 clients; full, sink:256 and h2o:0.2 mixed) on MODEL
#                                              (a config + tokenizer folder, dummy weights); REQUESTS (8) per client of
#                                              MAX_TOKENS (256) each
#   tools/gpu/core_bench.sh ncu [PROMPT [ARGS]] GPU time of each kernel of the 7B shape's decode step at a PROMPT-token (4096)
#                                              cache, bf16, batch 1, graphs (tools/gpu/ncu_step.sh; one layer ends at attn_combine),
#                                              the plain step or with more `tern bench` ARGS (e.g. the sink's): where the step
#                                              stands against its floor (weights plus keys and values at the copy bandwidth)
#   tools/gpu/core_bench.sh regression         no-regression rows: 7B batch 1 and 64 (graphs) and the issue-5 30B offload policy
#                                              (OFFLOAD=0: the 7B rows only)
set -uo pipefail
source .device/env.sh
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT"
tern() { dotnet .device/Tern.Cli/Tern.Cli.dll "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
case ${1:?tests|sink|h2o-offload|serve|ncu|regression} in
  tests)
    dotnet .device/Tern.Tests.Gpu/Tern.Tests.Gpu.dll > "$OUT/gpu-tests.txt" 2>&1
    grep -E "\[FAIL\]|Total:" "$OUT/gpu-tests.txt" | head -20 ;;
  sink)
    # Sink rows generate SINK_NEW tokens (the issue's 4,096: every-64 evictions recur and replay as graphs, as in a long run);
    # re-computation costs the same every step once the prompt fills its window, so 128 steps measure it (4,096 would take ~8 min).
    M=(--model bench/configs/llama2-7b-8k --dummy --device cuda --dtype bf16 -o "$OUT/sink.csv")
    for c in ${2:-4096}; do
      tern bench "${M[@]}" --new-tokens ${SINK_NEW:-4096} --prompt $c --kv-policy sink --kv-budget $c --kv-evict-every 64 --label "sink, evict every 64" | tail -1
      tern bench "${M[@]}" --new-tokens ${SINK_NEW:-4096} --prompt $c --kv-policy sink --kv-budget $c --label "sink, evict every step" | tail -1
      tern bench "${M[@]}" --new-tokens 128 --prompt $c --kv-policy window-recompute --kv-budget $c --label "window-recompute" | tail -1
      tern bench "${M[@]}" --new-tokens 128 --prompt $c --label "full cache (no eviction: the plain step at this length)" | tail -1
    done ;;
  h2o-offload)
    C=(--model tests/fixtures/configs/opt-30b --dummy --device cuda --dtype fp16 --gpu-mem 16GB --cpu-mem 100GB --prompt 512
       --new-tokens "${2:?new tokens}" --offload-dir /tmp --output "$OUT/offload.csv" --profile bench/offload-h200-2026-11-27/second-run/hardware-profile.json)
    C+=(--measure-steps ${MEASURE_STEPS:-0})
    IFS=";" read -ra fulls <<< "${3?full-cache policies (may be empty)}"
    for f in "${fulls[@]}"; do
      timeout 540 dotnet .device/Tern.Cli/Tern.Cli.dll bench "${C[@]}" --offload "$f" --label "full cache" 2>&1 | tee -a "$OUT/h2o-offload.txt" | grep -E "policy:|block:|measured|projected"
    done
    timeout 540 dotnet .device/Tern.Cli/Tern.Cli.dll bench "${C[@]}" --offload "${4:?h2o policy}" --kv-policy h2o --kv-budget 0.2 --label "h2o 20%" 2>&1 | tee -a "$OUT/h2o-offload.txt" | grep -E "policy:|block:|measured|projected" ;;
  serve)
    tern bench serve --model "${2:?model folder with a tokenizer}" --dummy --device cuda --clients 1,64 --max-tokens ${MAX_TOKENS:-256} --requests ${REQUESTS:-8} \
      --kv-mix full,sink:256,h2o:0.2 -o "$OUT/serving" 2>&1 | tee -a "$OUT/serve.txt" | tail -30 ;;
  ncu)
    # A step is ~11 matching kernels a layer (norms, products, rotary, cache append, attention's two, gated): skip ~30 steps (past
    # the prefill and the first warm-up replays), profile ~3. libtorch's elementwise and copy kernels are left out: the dummy
    # weights' initialisation launches thousands of them (the twenty-sixth session's first profile saw nothing else).
    NCU_FILTER=${NCU_FILTER:-"regex:gemv|attn_|cache_append|rms_norm|rotary|gated|gemm|Gemm|sm90|cutlass"} \
      NCU_SKIP=${NCU_SKIP:-12000} NCU_COUNT=${NCU_COUNT:-1100} tools/gpu/ncu_step.sh attn_combine --model bench/configs/llama2-7b-8k --dummy \
      --device cuda --dtype bf16 --batch 1 --prompt ${2:-4096} --new-tokens 64 --output "$OUT/ncu-bench.csv" "${@:3}" ;;
  regression)
    tern bench --model bench/configs/llama2-7b --dummy --device cuda --dtype bf16 --batch 1,64 --prompt 512 --new-tokens 128 \
      --floor --label "llama2-7b shape" --output "$OUT/results.csv" 2>&1 | tee -a "$OUT/bench.txt"
    [[ ${OFFLOAD:-1} == 0 ]] && exit 0  # the same 30B run is `h2o-offload 32` with the issue-5 policy as its full cache
    tern bench --model tests/fixtures/configs/opt-30b --dummy --device cuda --dtype fp16 --gpu-mem 16GB --cpu-mem 100GB --prompt 512 --new-tokens 32 \
      --offload-dir /tmp --output "$OUT/offload.csv" --profile bench/offload-h200-2026-11-27/second-run/hardware-profile.json \
      --offload "w=17/83/0,kv=0/100/0,act=0/100/0,gbs=8,ngb=6,wbits=16,kvbits=16,cpu-attn=off,overlap=on" --label "issue-5 policy" 2>&1 | tee -a "$OUT/bench.txt" | grep -E "policy:|measured" ;;
esac
