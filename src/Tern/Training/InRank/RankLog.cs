using System.Text.Json.Nodes;
using Tern.Evaluation;

namespace Tern.Training.InRank;

/// <summary>
/// A run's <c>inrank-log.jsonl</c>: one row per factored linear map at the start (step 0: r0), at every rank check — <c>step</c> (the optimizer step the
/// forward pass belongs to), <c>forward</c>, <c>linear</c>, <c>rank</c>, <c>live</c>, <c>explained</c> (g of the last k tried;
/// null at the cap) and <c>top</c> (the 20 largest singular values of the live product) — and one per linear at the stage
/// hand-off (<c>handoff: true</c>, the kept rank). A resumed run cuts it back to its checkpoint's step, as the training log.
/// </summary>
public static class RankLog
{
    /// <summary>The log's name in a run's output folder.</summary>
    public const string FileName = "inrank-log.jsonl";
    /// <summary>The rank-vs-step plot drawn next to it.</summary>
    public const string PlotName = "rank-curve.png";
    const int TopValues = 20;

    /// <summary>The row of one linear's rank check.</summary>
    public static JsonObject Check(int step, long forward, string linear, RankDecision decision, long live, IReadOnlyList<double> spectrum) => new()
    {
        ["step"] = step, ["forward"] = forward, ["linear"] = linear, ["rank"] = decision.Rank, ["live"] = live,
        ["explained"] = double.IsNaN(decision.Explained) ? null : decision.Explained,
        ["top"] = new JsonArray(spectrum.Take(TopValues).Select(v => (JsonNode?)JsonValue.Create(v)).ToArray()),
    };

    /// <summary>The row of one linear when rank discovery starts (step 0).</summary>
    public static JsonObject Start(string linear, int rank, long live) => new()
    {
        ["step"] = 0, ["forward"] = 0, ["linear"] = linear, ["rank"] = rank, ["live"] = live,
    };

    /// <summary>The row of one linear at the stage hand-off.</summary>
    public static JsonObject HandOff(int step, long forward, string linear, int rank) => new()
    {
        ["step"] = step, ["forward"] = forward, ["linear"] = linear, ["rank"] = rank, ["handoff"] = true,
    };

    /// <summary>Appends rows.</summary>
    public static void Append(string path, IEnumerable<JsonObject> rows) =>
        File.AppendAllText(path, string.Concat(rows.Select(r => r.ToJsonString() + "\n")));

    /// <summary>Each linear's rank after every check, in log order: (linear, steps, ranks).</summary>
    public static IReadOnlyList<(string Linear, double[] Steps, double[] Ranks)> Trajectories(string path) =>
        TrainingLog.Read(path).GroupBy(r => (string)r.Row["linear"]!)
            .Select(g => (g.Key, g.Select(r => (double)r.Step).ToArray(), g.Select(r => (double)(int)r.Row["rank"]!).ToArray())).ToArray();

    /// <summary>Draws every linear's rank against the optimizer step as a PNG: a staircase (the rank holds between checks).</summary>
    public static void SavePng(string logPath, string pngPath, string title) =>
        LinePlot.Save(pngPath, title, "optimizer step", "rank", Trajectories(logPath).Select(t =>
        {
            var (x, y) = (new List<double>(), new List<double>());
            for (int i = 0; i < t.Steps.Length; i++)
            {
                if (i > 0) { x.Add(t.Steps[i]); y.Add(t.Ranks[i - 1]); }
                x.Add(t.Steps[i]); y.Add(t.Ranks[i]);
            }
            return new PlotSeries(Short(t.Linear), x.ToArray(), y.ToArray());
        }));

    /// <summary>"model.layers.3.mlp.up_proj" → "3.up_proj": legends stay readable.</summary>
    static string Short(string linear)
    {
        var parts = linear.Split('.');
        int layer = Array.FindIndex(parts, p => int.TryParse(p, out _));
        return layer < 0 ? linear : $"{parts[layer]}.{parts[^1]}";
    }
}
