#!/usr/bin/env bash
# Per-kernel GPU time of 7B decode steps (batch 1, eager so each kernel is launched on its own), with Nsight Compute.
#   tools/gpu/profile.sh [SKIP] [COUNT]
set -uo pipefail
source .device/env.sh
OUT=${OUT:-/tmp/tern-out}; mkdir -p "$OUT"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || ls /usr/local/cuda/bin/ncu)
"$NCU" --csv --graph-profiling node --metrics gpu__time_duration.sum -k "regex:${KERNELS:-.}" --launch-skip "${1:-4000}" --launch-count "${2:-80}" \
  dotnet .device/Tern.Cli/Tern.Cli.dll bench --model bench/configs/llama2-7b --dummy --device cuda --dtype bf16 --batch 1 \
  --prompt 512 --new-tokens 64 ${PROFILE_MODE---no-cuda-graphs} --output "$OUT/profile-bench.csv" > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; body = rows[1:]
ki, vi = head.index("Kernel Name"), head.index("Metric Value")
tot = collections.defaultdict(lambda: [0, 0.0])
for r in body:
    name = r[ki][:70]; v = float(r[vi].replace(",", ""))
    tot[name][0] += 1; tot[name][1] += v
for name, (n, ns) in sorted(tot.items(), key=lambda x: -x[1][1]):
    print(f"{n:4d} x {ns / n / 1000:8.2f} us  total {ns / 1000:8.1f} us  {name}")
PY
