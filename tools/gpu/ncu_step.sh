#!/usr/bin/env bash
# GPU time of each kernel in decode steps, from the repository root on the GPU machine (.device made by tools/gpu/pack.sh):
# Nsight Compute over a CUDA graph's nodes (nsys is not installed on these machines; kernels run one at a time under it, so a side
# stream's overlap is not seen; clocks and caches left as they run), grouped by stream, kernel and grid, plus one layer in launch
# order: the kernels after one launch of LAYER_END up to the next; with each kernel's DRAM bytes (read + written) and bandwidth. Writes $OUT/ncu.csv (raw) and $OUT/ncu-summary.txt.
#   tools/gpu/ncu_step.sh LAYER_END TERN_BENCH_ARGS...
# Environment: NCU_FILTER (a regex of the kernels that count: the step's, leaving out the dummy weights' initialisation),
# NCU_SKIP (that many matching launches skipped first: past the prefill and into the warm-up's graph replays), NCU_COUNT (profiled).
set -uo pipefail
source .device/env.sh
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT"
end=${1:?the kernel that ends a layer, e.g. attn_combine}; shift
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1 || ls /usr/local/cuda/bin/ncu)
timeout 400 "$NCU" --csv --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --clock-control none --cache-control none \
  -k "${NCU_FILTER:?a regex of the kernels of a step}" --launch-skip "${NCU_SKIP:?}" --launch-count "${NCU_COUNT:?}" \
  dotnet .device/Tern.Cli/Tern.Cli.dll bench "$@" > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
python3 - "$OUT/ncu.csv" "$end" <<'PY' | tee "$OUT/ncu-summary.txt"
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows: sys.exit("no kernels profiled (see ncu.err)")
head, end = rows[0], sys.argv[2]
ki, vi, si, mi, ui, ii = (head.index(c) for c in ("Kernel Name", "Metric Value", "Stream", "Metric Name", "Metric Unit", "ID"))
gi = head.index("Grid Size") if "Grid Size" in head else None
# One row per (kernel launch, metric): gather each launch's time (us) and DRAM bytes read + written.
launches = collections.OrderedDict()
for r in rows[1:]:
    k = launches.setdefault(r[ii], {"row": r, "us": 0.0, "bytes": 0.0})
    v = float(r[vi].replace(",", ""))
    if r[mi].startswith("gpu__time_duration"): k["us"] = v * {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1, "us": 1, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}[r[ui]]
    else: k["bytes"] += v * {"byte": 1, "B": 1, "Kbyte": 1e3, "KB": 1e3, "Mbyte": 1e6, "MB": 1e6, "Gbyte": 1e9, "GB": 1e9}[r[ui]]
body = list(launches.values())
name = lambda r: r[ki].split("(")[0][:48] + (f" grid {r[gi]}" if gi is not None else "")
tot = collections.defaultdict(lambda: [0, 0.0, 0.0])
streams = collections.defaultdict(float)
for k in body:
    t = tot[(k["row"][si], name(k["row"]))]; t[0] += 1; t[1] += k["us"]; t[2] += k["bytes"]; streams[k["row"][si]] += k["us"]
layers = sum(1 for k in body if k["row"][ki].startswith(end))
total_us, total_bytes = sum(streams.values()), sum(k["bytes"] for k in body)
print(f"{len(body)} kernels, {total_us:.1f} us in all, {total_bytes / 1e9:.3f} GB of DRAM traffic ({total_bytes / total_us / 1e6:.2f} TB/s while kernels ran), {layers} layers among them (counted by {end})")
for s, t in streams.items(): print(f"stream {s}: {t:.1f} us" + (f", {t / layers:.2f} us a layer" if layers else ""))
for (s, key), (n, t, b) in sorted(tot.items(), key=lambda x: -x[1][1]):
    print(f"{n:5d} x {t / n:8.2f} us  total {t:9.1f} us  {b / max(t, 1e-9) / 1e6:5.2f} TB/s  stream {s}  {key}")
ends = [i for i, k in enumerate(body) if k["row"][ki].startswith(end)]
if len(ends) > 2:
    print(f"one layer, in launch order (from after one {end} to the next):")
    for k in body[ends[1] + 1:ends[2] + 1]: print(f"  {k['us']:8.2f} us  {k['bytes'] / 1e6:8.2f} MB  stream {k['row'][si]}  {name(k['row'])}")
PY
