#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (see bench/README.md):
#   tools/gpu/run.sh tests|bench|hf|all
# Needs .device/ made here by tools/gpu/pack.sh (Tern.Cli and Tern.Tests.Gpu); `hf` runs tools/gpu/hf_decode_baseline.py
# (a copy of ../shared/bench/hf_decode_baseline.py).
set -uo pipefail
source .device/env.sh
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT"
what=${1:-all}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
tern() { dotnet .device/Tern.Cli/Tern.Cli.dll "$@"; }
if [[ $what == tests || $what == all ]]; then
  dotnet .device/Tern.Tests.Gpu/Tern.Tests.Gpu.dll ${TEST_ARGS:-} > "$OUT/gpu-tests.txt" 2>&1
  grep -E "\[FAIL\]|Assert|Total:" "$OUT/gpu-tests.txt" | head -40
fi
if [[ $what == bench || $what == all ]]; then
  for m in ${MODES:-graphs eager}; do
    mode=""; [[ $m == eager ]] && mode="--no-cuda-graphs"
    tern bench --model bench/configs/llama2-7b --dummy --device cuda --dtype bf16 --batch 1,16,64 --prompt 512 --new-tokens 128 \
         --floor --label "llama2-7b shape" --output "$OUT/results.csv" $mode 2>&1 | tee -a "$OUT/bench.txt"
    tern bench --model bench/configs/llama-small --dummy --device cuda --dtype bf16 --batch 1,32 --prompt 128 --new-tokens 256 \
         --label "llama small d512 L8" --output "$OUT/results.csv" $mode 2>&1 | tee -a "$OUT/bench.txt"
  done
fi
if [[ $what == hf || $what == all ]]; then
  PYTHONUNBUFFERED=1 python3 tools/gpu/hf_decode_baseline.py 2>&1 | grep -v Warning > "$OUT/hf-baseline.json"
  python3 -c "import json;d=json.load(open('$OUT/hf-baseline.json'));print({k:[(r['bs'],r['decode_ms_per_step'],r['decode_tok_s']) for r in v] if isinstance(v,list) else v for k,v in d.items()})"
fi
