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
find .device -maxdepth 3 -type f \( -name 'libSkiaSharp.so' -o -name 'libHarfBuzzSharp.so' -o -name '*.xml' \) -delete
# Satellite resource assemblies (translated messages of xunit, System.CommandLine, ...): English is enough there.
find .device -mindepth 2 -maxdepth 2 -type d \( -name '??' -o -name '??-*' \) -exec rm -rf {} +
# Google OR-Tools' natives (~65 MB: the LP of `tern offload plan` / `--offload auto`) would break the 64 MiB too: plans are made
# here and passed to the GPU machine as explicit policies (tools/gpu/offload_bench.sh); there `--offload auto` says so.
find .device -type f \( -name 'libortools.so*' -o -name 'libscip.so*' -o -name 'libhighs.so*' -o -name 'libCbc*.so*' -o -name 'libClp*.so*' \
  -o -name 'libCgl.so*' -o -name 'libCoinUtils.so*' -o -name 'libOsi*.so*' -o -name 'libprotobuf.so*' -o -name 'libabsl_*.so*' \
  -o -name 'libre2.so*' -o -name 'google-ortools-native.so' -o -name 'libutf8_validity.so*' \) -delete
du -sh .device >&2
