#!/usr/bin/env bash
# GPU time of each kernel in decode steps, from the repository root on the GPU machine (.device made by tools/gpu/pack.sh):
# Nsight Compute over a CUDA graph's nodes (nsys is not installed on these machines; kernels run one at a time under it, so a side
# stream's overlap is not seen; clocks and caches left as they run), grouped by stream, kernel and grid, plus one layer in launch
# order: the kernels after one launch of LAYER_END up to the next. Writes $OUT/ncu.csv (raw) and $OUT/ncu-summary.txt.
#   tools/gpu/ncu_step.sh LAYER_END TERN_BENCH_ARGS...
# Environment: NCU_FILTER (a regex of the kernels that count: the step's, leaving out the dummy weights' initialisation),
# NCU_SKIP (that many matching launches skipped first: past the prefill and into the warm-up's graph replays), NCU_COUNT (profiled).
set -uo pipefail
source .device/env.sh
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT"
end=${1:?the kernel that ends a layer, e.g. attn_combine}; shift
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1 || ls /usr/local/cuda/bin/ncu)
timeout 400 "$NCU" --csv --graph-profiling node --metrics gpu__time_duration.sum --clock-control none --cache-control none \
  -k "${NCU_FILTER:?a regex of the kernels of a step}" --launch-skip "${NCU_SKIP:?}" --launch-count "${NCU_COUNT:?}" \
  dotnet .device/Tern.Cli/Tern.Cli.dll bench "$@" > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
python3 - "$OUT/ncu.csv" "$end" <<'PY' | tee "$OUT/ncu-summary.txt"
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows: sys.exit("no kernels profiled (see ncu.err)")
head, body, end = rows[0], rows[1:], sys.argv[2]
ki, vi, si = head.index("Kernel Name"), head.index("Metric Value"), head.index("Stream")
gi = head.index("Grid Size") if "Grid Size" in head else None
us = lambda r: float(r[vi].replace(",", "")) / 1e3
name = lambda r: r[ki].split("(")[0][:48] + (f" grid {r[gi]}" if gi is not None else "")
tot = collections.defaultdict(lambda: [0, 0.0])
streams = collections.defaultdict(float)
for r in body:
    tot[(r[si], name(r))][0] += 1; tot[(r[si], name(r))][1] += us(r); streams[r[si]] += us(r)
layers = sum(1 for r in body if r[ki].startswith(end))
print(f"{len(body)} kernels, {sum(streams.values()):.1f} us in all, {layers} layers among them (counted by {end})")
for s, t in streams.items(): print(f"stream {s}: {t:.1f} us" + (f", {t / layers:.2f} us a layer" if layers else ""))
for (s, key), (n, t) in sorted(tot.items(), key=lambda x: -x[1][1]):
    print(f"{n:5d} x {t / n:8.2f} us  total {t:9.1f} us  stream {s}  {key}")
ends = [i for i, r in enumerate(body) if r[ki].startswith(end)]
if len(ends) > 2:
    print(f"one layer, in launch order (from after one {end} to the next):")
    for r in body[ends[1] + 1:ends[2] + 1]: print(f"  {us(r):8.2f} us  stream {r[si]}  {name(r)}")
PY
