#!/usr/bin/env bash
# Issue 12 (one execution core) on the GPU machine. Carry .device made by tools/gpu/pack.sh (models/ moved aside, see
# docs/state-of-work.md); one call each, from the repository root there, each well under the 10-minute call limit:
#   tools/gpu/core_bench.sh tests              the whole GPU suite (HF parity, policy and offload contracts, compositions)
#   tools/gpu/core_bench.sh sink [CACHES]      Llama-2-7B shape, bf16, batch 1, prompt = cache size, 128 new tokens: sink
#                                              (CUDA graphs; eviction every 64 and every step) against window re-computation
#   tools/gpu/core_bench.sh h2o-offload GEN FULL_POLICY H2O_POLICY
#                                              OPT-30B shape, fp16 dummy weights, --gpu-mem 16GB, CPU 100 GB, prompt 512 + GEN:
#                                              the full cache against h2o 20% (policies planned here with `tern offload plan
#                                              ... --profile bench/offload-h200-2026-11-27/hardware-profile.json [--kv-policy h2o
#                                              --kv-budget 0.2]`: OR-Tools is not packed)
set -uo pipefail
source .device/env.sh
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT"
tern() { dotnet .device/Tern.Cli/Tern.Cli.dll "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
case ${1:?tests|sink|h2o-offload} in
  tests)
    dotnet .device/Tern.Tests.Gpu/Tern.Tests.Gpu.dll > "$OUT/gpu-tests.txt" 2>&1
    grep -E "\[FAIL\]|Total:" "$OUT/gpu-tests.txt" | head -20 ;;
  sink)
    M=(--model bench/configs/llama2-7b-8k --dummy --device cuda --dtype bf16 -o "$OUT/sink.csv" --new-tokens 128)
    for c in ${2:-4096}; do
      tern bench "${M[@]}" --prompt $c --kv-policy sink --kv-budget $c --kv-evict-every 64 --label "sink, evict every 64" | tail -1
      tern bench "${M[@]}" --prompt $c --kv-policy sink --kv-budget $c --label "sink, evict every step" | tail -1
      tern bench "${M[@]}" --prompt $c --kv-policy window-recompute --kv-budget $c --label "window-recompute" | tail -1
    done ;;
  h2o-offload)
    C=(--model tests/fixtures/configs/opt-30b --dummy --device cuda --dtype fp16 --gpu-mem 16GB --cpu-mem 100GB --prompt 512
       --new-tokens "${2:?new tokens}" --offload-dir /tmp --output "$OUT/offload.csv" --profile bench/offload-h200-2026-11-27/hardware-profile.json)
    tern bench "${C[@]}" --offload "${3:?full-cache policy}" --label "full cache" 2>&1 | tee -a "$OUT/h2o-offload.txt" | grep -E "policy:|block:|measured"
    tern bench "${C[@]}" --offload "${4:?h2o policy}" --kv-policy h2o --kv-budget 0.2 --label "h2o 20%" 2>&1 | tee -a "$OUT/h2o-offload.txt" | grep -E "policy:|block:|measured" ;;
esac
