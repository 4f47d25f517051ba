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
#   tools/gpu/dejavu_bench.sh ncu      GPU time of each kernel in a sparse decode step (NCU_LEVEL, default mlp=0.1,heads=0.5):
#                                      Nsight Compute over the graph's nodes past warm-up (nsys is not installed on these
#                                      machines), grouped by kernel and grid, in $OUT/ncu-summary.txt.
# Environment: PROMPT (128), NEW (64 decode tokens per level), LEVELS (the sweep), GRAPHS (1; 0: eager steps).
set -uo pipefail
source .device/env.sh
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT"
tern() { dotnet .device/Tern.Cli/Tern.Cli.dll "$@"; }
PROMPT=${PROMPT:-128} NEW=${NEW:-64}
LEVELS=${LEVELS:-"dense;heads=0.5;mlp=0.05;mlp=0.05,heads=0.5;mlp=0.1;mlp=0.1,heads=0.5;mlp=0.2;mlp=0.2,heads=0.5"}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
case ${1:?tests|bench|ncu} in
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
  ncu)
    # GPU time of each of Tern's kernels in one sparse decode step (Nsight Compute on the graph's nodes; kernels run one at a time
    # under it, so the side stream's overlap is not seen): the launches of a step counted past warm-up, grouped by kernel and
    # grid (the predictors' GEMVs apart from the projections'). NCU_SKIP / NCU_COUNT: kernels (of the filter) skipped / profiled.
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || ls /usr/local/cuda/bin/ncu)
    level=${NCU_LEVEL:-mlp=0.1,heads=0.5}
    timeout 400 "$NCU" --csv --graph-profiling node --metrics gpu__time_duration.sum -k "regex:select|gather|columns|gemv|attn_|cache_append|gated|rms_norm" \
      --launch-skip "${NCU_SKIP:-12000}" --launch-count "${NCU_COUNT:-700}" \
      dotnet .device/Tern.Cli/Tern.Cli.dll bench --model tests/fixtures/configs/opt-30b --dummy --device cuda --dtype fp16 --batch 1 \
      --prompt "$PROMPT" --new-tokens "$NEW" --sparsity-sweep "$level" --output "$OUT/ncu-bench.csv" > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
    python3 - "$OUT/ncu.csv" <<'PY' | tee "$OUT/ncu-summary.txt"
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows: sys.exit("no kernels profiled (see ncu.err)")
head, body = rows[0], rows[1:]
ki, vi = head.index("Kernel Name"), head.index("Metric Value")
gi = head.index("Grid Size") if "Grid Size" in head else None
tot = collections.defaultdict(lambda: [0, 0.0])
for r in body:
    key = r[ki][:40] + (f" grid {r[gi]}" if gi is not None else "")
    tot[key][0] += 1; tot[key][1] += float(r[vi].replace(",", ""))
all_ns = sum(v[1] for v in tot.values())
print(f"{len(body)} kernels, {all_ns / 1e3:.1f} us in all")
for key, (n, ns) in sorted(tot.items(), key=lambda x: -x[1][1]):
    print(f"{n:4d} x {ns / n / 1000:8.2f} us  total {ns / 1000:8.1f} us  {key}")
PY
    ;;
esac
