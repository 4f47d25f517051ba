#!/usr/bin/env bash
# Makes the working tree small enough to travel beside .device in one device call (64 MiB in all): `out` moves models/, the
# bench result folders (all but bench/configs, bench/cpu and bench/offload-h200-2026-11-27, which jobs read) and, unless
# TESTS=1, .device/Tern.Tests.Gpu (15 MB) to $ASIDE; `back` returns them. Run from the repository root; sizes are printed.
#   tools/gpu/carry.sh out|back      ASIDE (/tmp/tern-aside), TESTS (1: keep Tern.Tests.Gpu in .device)
set -euo pipefail
ASIDE=${ASIDE:-/tmp/tern-aside}
case ${1:?out|back} in
  out)
    mkdir -p "$ASIDE/bench"
    [ "${TESTS:-1}" = 1 ] || { [ -d .device/Tern.Tests.Gpu ] && mv .device/Tern.Tests.Gpu "$ASIDE/"; } || true
    [ -d models ] && mv models "$ASIDE/"
    for d in bench/*/; do
      case "$d" in bench/configs/|bench/cpu/|bench/offload-h200-2026-11-27/) ;; *) mv "$d" "$ASIDE/bench/" ;; esac
    done
    du -sh .device data/gpu 2> /dev/null || true
    echo "tree: $(git ls-files -co --exclude-standard | xargs du -cb 2> /dev/null | tail -1 | cut -f1) bytes" ;;
  back)
    [ -d "$ASIDE/Tern.Tests.Gpu" ] && mv "$ASIDE/Tern.Tests.Gpu" .device/
    [ -d "$ASIDE/models" ] && mv "$ASIDE/models" .
    for d in "$ASIDE"/bench/*/; do [ -d "$d" ] && mv "$d" bench/; done
    git status --short | head ;;
esac
