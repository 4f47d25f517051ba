#!/usr/bin/env bash
# Issue 13 (DejaVu) on the GPU machine, from the repository root with .device made by tools/gpu/pack.sh; one call each, each
# well under the 10-minute call limit:
#   tools/gpu/dejavu_bench.sh tests    the DejaVu GPU tests (gather-GEMV kernels against the dense maths, head-subset decode
#                                      against the CPU composite path) and the fused kernels' (decode attention changed with them)
#   tools/gpu/dejavu_bench.sh bench    batch-1 decode of the OPT-30B shape (tests/fixtures/configs/opt-30b), fp16 dummy weights
#                                      made once on the GPU (60 GB), every level on that one model (`tern bench --sparsity-sweep`):
#                                      dense, then MLP 5/10/20% active × heads 50/100% and heads 50% alone, untrained predictors
#                                      of the default ranks run every step (their time, not their choices). Per level: decode
#                                      ms/token, the speed-up over dense, predictor ms per layer, the sparse MLP's achieved
#                                      bandwidth (bytes read / time) against the copy bandwidth (--floor); rows in $OUT/dejavu.csv,
#                                      the log in $OUT/dejavu.txt, the summary in $OUT/dejavu-summary.txt.
#   tools/gpu/dejavu_bench.sh profile  where a decode step's time goes (needs nsys): each of PROFILE_LEVELS ("dense" and
#                                      "mlp=0.1,heads=0.5") in its own process under `nsys profile --cuda-graph-trace=node`
#                                      (kernels inside graph replays), NEW decode tokens; per level the GPU kernel summary
#                                      (`nsys stats cuda_gpu_kern_sum`, CSV) in $OUT/profile-LEVEL.csv and its 25 costliest
#                                      kernels in $OUT/profile-summary.txt (the dummy weights' initialisation is in the same
#                                      summary: its kernels are the fills and random draws, each called once per weight).
# Environment: PROMPT (128), NEW (64 decode tokens per level), LEVELS (the sweep), GRAPHS (1; 0: eager steps).
set -uo pipefail
source .device/env.sh
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT"
tern() { dotnet .device/Tern.Cli/Tern.Cli.dll "$@"; }
PROMPT=${PROMPT:-128} NEW=${NEW:-64}
LEVELS=${LEVELS:-"dense;heads=0.5;mlp=0.05;mlp=0.05,heads=0.5;mlp=0.1;mlp=0.1,heads=0.5;mlp=0.2;mlp=0.2,heads=0.5"}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
case ${1:?tests|bench|profile} in
  tests)
    dotnet .device/Tern.Tests.Gpu/Tern.Tests.Gpu.dll -class Tern.Tests.Gpu.SparseKernelTests -class Tern.Tests.Gpu.FusedKernelTests \
      > "$OUT/dejavu-tests.txt" 2>&1
    grep -E "\[FAIL\]|Assert|Total:" "$OUT/dejavu-tests.txt" | head -40 ;;
  bench)
    mode=""; [[ ${GRAPHS:-1} == 0 ]] && mode="--no-cuda-graphs"
    timeout 560 dotnet .device/Tern.Cli/Tern.Cli.dll bench --model tests/fixtures/configs/opt-30b --dummy --device cuda --dtype fp16 --batch 1 \
      --prompt "$PROMPT" --new-tokens "$NEW" --floor --sparsity-sweep "$LEVELS" --label "opt-30b shape, DejaVu" --output "$OUT/dejavu.csv" $mode \
      2>&1 | tee "$OUT/dejavu.txt"
    grep -E "copy bandwidth|ms/layer|^ +1 " "$OUT/dejavu.txt" > "$OUT/dejavu-summary.txt"
    cat "$OUT/dejavu-summary.txt" ;;
  profile)
    command -v nsys > /dev/null || { echo "nsys is not installed here" | tee "$OUT/profile-summary.txt"; exit 0; }
    IFS=';' read -ra levels <<< "${PROFILE_LEVELS:-dense;mlp=0.1,heads=0.5}"
    : > "$OUT/profile-summary.txt"
    for level in "${levels[@]}"; do
      name=$(echo "$level" | tr ',=' '-_')
      timeout 280 nsys profile --trace=cuda --cuda-graph-trace=node --force-overwrite true -o "$OUT/profile-$name" \
        dotnet .device/Tern.Cli/Tern.Cli.dll bench --model tests/fixtures/configs/opt-30b --dummy --device cuda --dtype fp16 --batch 1 \
        --prompt "$PROMPT" --new-tokens "$NEW" --sparsity-sweep "$level" --output "$OUT/profile-$name-bench.csv" > "$OUT/profile-$name.txt" 2>&1
      nsys stats --report cuda_gpu_kern_sum --format csv --force-export true -o "$OUT/profile-$name" "$OUT/profile-$name.nsys-rep" > /dev/null 2>&1
      csv=$(ls "$OUT"/profile-"$name"*cuda_gpu_kern_sum*.csv 2>/dev/null | head -1)
      { echo "== $level ($(grep -E '^ +1 ' "$OUT/profile-$name.txt" | head -1))"
        [ -n "$csv" ] && python3 - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
key = lambda r, *words: next(v for k, v in r.items() if all(w in k.replace(" ", "") for w in words))  # column names vary by version
for r in rows[:25]:
    print(f"{float(key(r, 'Time', '%')):6.2f}%  {int(float(key(r, 'Instances'))):8d} calls  {float(key(r, 'Avg')) / 1e3:9.2f} us avg  {key(r, 'Name')[:110]}")
PY
      } >> "$OUT/profile-summary.txt"
      rm -f "$OUT/profile-$name.nsys-rep" "$OUT/profile-$name.sqlite"
    done
    cat "$OUT/profile-summary.txt" ;;
esac
