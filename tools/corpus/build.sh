#!/usr/bin/env bash
# Builds Tern's training corpus from free English text that Debian ships (issue 3).
#   tools/corpus/build.sh [OUT_DIR]      (default: data/corpus, git-ignored)
# Installs the source packages with apt-get when missing, then extract_corpus.py extracts, normalises (NFC, \n
# newlines, no trailing spaces, no control characters), deduplicates (exact, by document hash), splits
# train/validation by document hash (~1% validation) and writes train.txt, validation.txt, kjv.txt (the King James
# Bible, held out of both for long-context evaluation) and corpus.json (sizes per source, licences, split sizes).
# Same packages in, same bytes out. Nothing here is committed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/data/corpus}"

packages=(dict-gcide fortunes fortunes-min bible-kjv-text bible-kjv python3.11-doc debian-reference-en)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

mkdir -p "$out"
python3 "$here/extract_corpus.py" "$out"
