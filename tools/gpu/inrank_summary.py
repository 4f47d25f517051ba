#!/usr/bin/env python3
"""Issue 15's comparison table from a tools/gpu/inrank_bench.sh work folder: perplexities, ranks, time, memory, throughput.
Every number is read from the runs' own files; ratios are formed only between these runs. Usage: inrank_summary.py WORK"""
import json, os, re, sys

work = sys.argv[1]


def read(path, default=None):
    try:
        with open(os.path.join(work, path)) as f:
            return f.read().strip()
    except OSError:
        return default


def ppl(name, text):
    m = re.search(r"perplexity ([0-9.]+)", read(f"{name}/ppl-{text}.txt", ""))
    return float(m.group(1)) if m else float("nan")


rows = {}
for name in ("full", "inrank", "fixed"):
    if not os.path.isdir(os.path.join(work, name)):
        continue  # the control is optional (CONTROL=0)
    summary = json.loads(read(f"{name}/run/train-summary.json", "{}"))
    config = json.loads(read(f"{name}/run/config.json", "{}"))
    low = config.get("low_rank", {}).get("linears", {})
    full_rank = min(config.get("hidden_size", 0), config.get("intermediate_size", 0)) or 1
    rows[name] = dict(
        params=summary.get("parameters"), tps=summary.get("tokens_per_second"), valid=ppl(name, "validation"), kjv=ppl(name, "kjv"),
        wall=float(read(f"{name}/wall.txt", "nan")), peak=float(read(f"{name}/peak-mib.txt", "nan")),
        ranks={k: v["rank"] for k, v in low.items()}, full_rank=full_rank, variant=config.get("low_rank", {}).get("variant", "efficient"))

full = rows["full"]
print(f"Device: {read('gpu.txt', '?')}; control rank {read('control-rank.txt', '?')}.\n")
print("| run | parameters (model smaller) | valid ppl | Δ vs full | KJV ppl | mean MLP rank (% of full) | wall s (faster) | peak MiB (smaller) | tokens/s |")
print("|---|---|---|---|---|---|---|---|---|")
for name, label in (("full", "full rank"), ("inrank", "InRank"), ("fixed", "fixed-rank control")):
    if name not in rows:
        continue
    r = rows[name]
    ranks = list(r["ranks"].values())
    mean = f"{sum(ranks) / len(ranks):.1f} ({100 * sum(ranks) / len(ranks) / r['full_rank']:.1f}%)" if ranks else "full"
    if name != "full" and r["variant"] != "efficient":
        label += f" ({r['variant']} variant: W0 + B·A)"
    print(f"| {label} | {r['params']:,} ({full['params'] / r['params']:.2f}×) | {r['valid']:.3f} | {100 * (r['valid'] / full['valid'] - 1):+.2f}% | "
          f"{r['kjv']:.3f} | {mean} | {r['wall']:.0f} ({full['wall'] / r['wall']:.2f}×) | {r['peak']:.0f} ({full['peak'] / r['peak']:.2f}×) | {r['tps']:,.0f} |")
dense = re.search(r"perplexity ([0-9.]+)", read("inrank/dense-eval/ppl-validation.txt", "") or "")
print(f"\nInRank exported dense (`tern export --dense`): validation perplexity {dense.group(1) if dense else '?'}; "
      f"{read('inrank/transformers.txt', 'transformers not run')}")
print("\nInRank's final rank per MLP linear (% of full rank):\n")
layers = sorted({int(k.split('.')[2]) for k in rows["inrank"]["ranks"]})
print("| layer | gate_proj | up_proj | down_proj |\n|---|---|---|---|")
for i in layers:
    cells = [rows["inrank"]["ranks"].get(f"model.layers.{i}.mlp.{p}") for p in ("gate_proj", "up_proj", "down_proj")]
    print(f"| {i} | " + " | ".join(f"{c} ({100 * c / rows['inrank']['full_rank']:.0f}%)" for c in cells) + " |")
