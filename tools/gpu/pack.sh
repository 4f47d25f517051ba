#!/usr/bin/env bash
# Packs Tern for the GPU machine: ../shared/device/pack (framework-dependent publish, libtorch stripped, .NET runtime added),
# then removes the plotting natives (SkiaSharp, HarfBuzz: ~11 MB a project) so CLI + GPU tests stay under the 64 MiB a run may
# carry. Plots are drawn where the results come back, not on the GPU machine (tern train skips loss-curve.png there).
#   tools/gpu/pack.sh [PROJECT.csproj ...]     (default: Tern.Cli and Tern.Tests.Gpu)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
projects=("$@")
[ ${#projects[@]} -eq 0 ] && projects=(src/Tern.Cli/Tern.Cli.csproj tests/Tern.Tests.Gpu/Tern.Tests.Gpu.csproj)
../shared/device/pack "${projects[@]}"
find .device -maxdepth 3 -type f \( -name 'libSkiaSharp.so' -o -name 'libHarfBuzzSharp.so' \) -delete
du -sh .device >&2
