#!/usr/bin/env bash
# Makes data/gpu (git-ignored): what GPU training runs read — train.bin.xz, valid.bin, validation.txt, kjv.txt.xz and tokenizer/
# (the shipped default model's, which its corpus trained) — from the corpus that tools/corpus/build.sh rebuilds from Debian
# packages (same packages, same bytes). About a minute here. A device call that carries it has tools/gpu/chain.sh stage it.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
corpus=${CORPUS:-data/corpus} out=data/gpu
[ -f "$corpus/train.txt" ] || tools/corpus/build.sh "$corpus"
mkdir -p "$out/tokenizer"
cp models/default/tokenizer.json models/default/tokenizer_config.json "$out/tokenizer/"
dotnet build src/Tern.Cli -c Release -v q -nologo > /dev/null
tern() { dotnet src/Tern.Cli/bin/Release/net10.0/Tern.Cli.dll "$@"; }
tern tokenizer encode -t "$out/tokenizer" -i "$corpus/train.txt" -o "$out/train.bin" | tail -1
tern tokenizer encode -t "$out/tokenizer" -i "$corpus/validation.txt" -o "$out/valid.bin" | tail -1
cp "$corpus/validation.txt" "$out/"
xz -T2 -f "$out/train.bin"; xz -T2 -kc "$corpus/kjv.txt" > "$out/kjv.txt.xz"
du -sh "$out"; ls -la "$out"
