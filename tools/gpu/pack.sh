#!/usr/bin/env bash
# Packs Tern for the GPU machine: ../shared/device/pack (framework-dependent publish, libtorch stripped, .NET runtime added),
# then removes the plotting natives (SkiaSharp, HarfBuzz: ~11 MB a project) so CLI + GPU tests stay under the 64 MiB a run may
# carry. Plots are drawn where the results come back, not on the GPU machine (tern train skips loss-curve.png there).
# OR-Tools' native library (33 MB, the offloading LP) travels once, xz-compressed (8 MB), and env.sh unpacks it next to
# each project on the GPU machine.
#   tools/gpu/pack.sh [PROJECT.csproj ...]     (default: Tern.Cli and Tern.Tests.Gpu)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
projects=("$@")
[ ${#projects[@]} -eq 0 ] && projects=(src/Tern.Cli/Tern.Cli.csproj tests/Tern.Tests.Gpu/Tern.Tests.Gpu.csproj)
../shared/device/pack "${projects[@]}"
find .device -maxdepth 3 -type f \( -name 'libSkiaSharp.so' -o -name 'libHarfBuzzSharp.so' \) -delete
ortools=$(find .device -mindepth 2 -maxdepth 2 -name 'libortools.so.*' | head -1)
if [ -n "$ortools" ]; then
  name=$(basename "$ortools")
  xz -T2 -c "$ortools" > ".device/$name.xz"
  find .device -mindepth 2 -maxdepth 2 -name "$name" -delete
  cat >> .device/env.sh <<ENV
for _p in "\$_d"/*/; do [ -f "\$_p/Tern.dll" ] && [ ! -f "\$_p/$name" ] && xz -dc "\$_d/$name.xz" > "\$_p/$name"; done; true
ENV
fi
du -sh .device >&2
