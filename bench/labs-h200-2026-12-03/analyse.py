"""Per-layer summary of a `tern train --probe-dynamics` CSV (issue 17, JoMA on a real run).

python3 analyse.py [dynamics.csv]  ->  markdown tables: attention entropy (step 0, minimum and its step, final, final/min,
share of the drop recovered, window means) and per MLP matrix the stable rank (step 0, minimum and its step, final, final/min).
"""
import collections, csv, statistics, sys

rows = list(csv.DictReader(open(sys.argv[1] if len(sys.argv) > 1 else "dynamics.csv")))
uniform = float(rows[0]["uniform_entropy"])
series = collections.defaultdict(dict)  # (column, layer) -> {step: value}
for r in rows:
    for column in r:
        if column not in ("step", "layer", "uniform_entropy"):
            series[(column, int(r["layer"]))][int(r["step"])] = float(r[column])
layers = sorted({int(r["layer"]) for r in rows})
windows = [(100, 150), (250, 350), (900, 1100), (2800, 3000)]


def summary(column, layer):
    s = series[(column, layer)]
    steps = sorted(s)
    low = min(steps, key=lambda t: s[t])
    return s, steps, low


print(f"uniform causal entropy over the window: {uniform:.3f} nats; probes at {len(series[('attention_entropy', 0)])} steps\n")
print("| layer | step 0 | min (step) | min / uniform | final (3000) | final / min | drop recovered | "
      + " | ".join(f"mean {a}–{b}" for a, b in windows) + " |")
print("|" + "---:|" * (7 + len(windows)))
for layer in layers:
    s, steps, low = summary("attention_entropy", layer)
    first, last = s[steps[0]], s[steps[-1]]
    means = [statistics.mean(v for t, v in s.items() if a <= t <= b) for a, b in windows]
    print(f"| {layer} | {first:.3f} | {s[low]:.3f} ({low}) | {s[low] / uniform:.3f} | {last:.3f} | {last / s[low]:.3f} | "
          f"{(last - s[low]) / (first - s[low]):.1%} | " + " | ".join(f"{m:.3f}" for m in means) + " |")

for kind in ("gate", "up", "down"):
    column = "stable_rank_" + kind
    if (column, layers[0]) not in series:
        continue
    print(f"\nstable rank, {kind}: | layer | step 0 | min (step) | step 1500 | final | final / min |")
    for layer in layers:
        s, steps, low = summary(column, layer)
        print(f"| {layer} | {s[steps[0]]:.1f} | {s[low]:.1f} ({low}) | {s.get(1500, float('nan')):.1f} | {s[steps[-1]]:.1f} | "
              f"{s[steps[-1]] / s[low]:.2f} |")
