#!/usr/bin/env bash
# Issue 5 (FlexGen offloading) on the GPU machine. Carry .device made by tools/gpu/pack.sh (models/ moved aside, see
# docs/state-of-work.md). OR-Tools' natives are not packed (64 MiB), so policies are planned here with `tern offload plan`
# and passed explicitly; prediction needs only the cost model. One call each, from the repository root there:
#   tools/gpu/offload_bench.sh tests                       the CPU-contract tests on CUDA (offload parity, copy stream, cap)
#   tools/gpu/offload_bench.sh calibrate                   hardware profile of this card + local disk → $OUT/hardware-profile.json
#   tools/gpu/offload_bench.sh bench POLICY [PROFILE]      OPT-30B shape, fp16 dummy weights, --gpu-mem 16GB, prompt 512, gen 32:
#                                                          measured vs predicted throughput (PROFILE: a calibrate output, sent along)
#   tools/gpu/offload_bench.sh hf [BATCH]                  HF transformers + accelerate device_map, weights capped at HF_GPU_GIB (16) GiB (projected)
#   tools/gpu/offload_bench.sh ablation POLICY PROFILE [overlap|search|attention|4bit]
#                                                          the same bench with overlap off, FlexGen's "no policy search"
#                                                          (w=0/100/0 at the same block), CPU attention toggled, 4-bit weights
# Same card, same run: do calibrate + bench + hf on one warm machine and compare only numbers from the same card.
set -uo pipefail
source .device/env.sh
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT"
tern() { dotnet .device/Tern.Cli/Tern.Cli.dll "$@"; }
MODEL=tests/fixtures/configs/opt-30b
COMMON=(--model $MODEL --dummy --device cuda --dtype fp16 --gpu-mem 16GB --cpu-mem ${CPU_MEM:-100GB} --prompt 512 --new-tokens 32
        --offload-dir ${OFFLOAD_DIR:-/tmp} --output "$OUT/offload.csv")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
case ${1:?tests|calibrate|bench|hf|ablation} in
  tests)
    dotnet .device/Tern.Tests.Gpu/Tern.Tests.Gpu.dll -class "Tern.Tests.Gpu.CudaOffloadParityTests" -class "Tern.Tests.Gpu.CudaTransferEngineTests" \
      > "$OUT/offload-tests.txt" 2>&1
    grep -E "\[FAIL\]|Assert|Total:" "$OUT/offload-tests.txt" | head -40 ;;
  calibrate)
    tern offload calibrate --device cuda --dtype fp16 --offload-dir ${OFFLOAD_DIR:-/tmp} --size 1GB -o "$OUT/hardware-profile.json" 2>&1 | tee "$OUT/calibrate.txt" ;;
  bench)
    profile=(); [[ -n ${3:-} ]] && profile=(--profile "$3")
    tern bench "${COMMON[@]}" "${profile[@]}" --offload "${2:?policy from tern offload plan}" --label "tern offload opt-30b" 2>&1 | tee -a "$OUT/offload-bench.txt" ;;
  hf)
    PYTHONUNBUFFERED=1 python3 tools/gpu/hf_offload_baseline.py ${2:-8} ${HF_GPU_GIB:-16} ${HF_CPU_GIB:-110} 2>&1 | grep --line-buffered -v Warning | tee -a "$OUT/hf-offload.txt" ;;
  ablation)
    profile=(); [[ -n ${3:-} ]] && profile=(--profile "$3")
    base=${2:?policy}
    blk=$(echo "$base" | grep -o 'gbs=[0-9]*,ngb=[0-9]*'); state=$(echo "$base" | grep -o 'cpu-attn=[a-z]*' || echo cpu-attn=off)
    attn="cpu-attn=off|no CPU attention"; [[ $base == *cpu-attn=off* ]] && attn="cpu-attn=on,kv=0/100/0|with CPU attention"
    only=${4:-}   # overlap|search|attention|4bit: one variant per call (each is a full 30B run; a call lasts at most 10 minutes)
    for variant in "overlap|$base,overlap=off|no overlap" "search|w=0/100/0,kv=0/100/0,act=0/100/0,$blk,$state|no policy search (FlexGen's w=0/100)" \
                   "attention|$base,${attn%%|*}|${attn#*|}" "4bit|$base,wbits=4|4-bit weights"; do
      key=${variant%%|*}; rest=${variant#*|}; policy=${rest%%|*}; name=${rest#*|}
      [[ -n $only && $only != "$key" ]] && continue
      tern bench "${COMMON[@]}" "${profile[@]}" --offload "$policy" --label "ablation: $name" 2>&1 | tee -a "$OUT/offload-ablation.txt"
    done ;;
esac
