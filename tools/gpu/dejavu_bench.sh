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
    # GPU time of each kernel in sparse decode steps (Nsight Compute on the graph's nodes; kernels run one at a time under it,
    # so the side stream's overlap is not seen; clocks and caches left as they run). NCU_FILTER (default: the step's kernels —
    # Tern's, cuBLAS's, LayerNorm, index and reduce — leaving out the dummy weights' initialisation, tens of thousands of
    # elementwise launches) picks what counts; NCU_SKIP (default 25000) of those are skipped, past SparsityTiming's passes into
    # the warm-up generation's graph replays; NCU_COUNT (default 1500, about three steps) are profiled. Grouped by stream,
    # kernel and grid, plus the run of kernels from one columns_finish (the end of a layer's MLP) to the next: one layer as the
    # step runs it (the side stream's predictors for the next layer, then the main stream's chain).
    NCU_FILTER=${NCU_FILTER:-"regex:gather|columns|gemv|select|attn_|cache_append|layer_norm|reduce|index|gemm|Gemm|sm90|cutlass|copy"} \
      NCU_SKIP=${NCU_SKIP:-25000} NCU_COUNT=${NCU_COUNT:-1500} tools/gpu/ncu_step.sh columns_finish \
      --model tests/fixtures/configs/opt-30b --dummy --device cuda --dtype fp16 --batch 1 --prompt "$PROMPT" --new-tokens "$NEW" \
      --sparsity-sweep "${NCU_LEVEL:-mlp=0.1,heads=0.5}" --output "$OUT/ncu-bench.csv"
    ;;
esac
