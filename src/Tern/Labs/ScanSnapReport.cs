using System.Globalization;
using System.Text;
using Tern.Evaluation;

namespace Tern.Labs;

/// <summary>CSV files and PNG plots of Scan &amp; Snap runs and sweeps.</summary>
public static class ScanSnapReport
{
    /// <summary>Snapshots the paper's Fig. 4 shows as rows (plus the last one).</summary>
    static readonly int[] Figure4Snapshots = [0, 2, 4, 6, 8, 10];

    /// <summary>Writes <c>loss.csv</c> (iteration, loss), <c>attention.csv</c> (iteration, fact, token, probability, c_n,
    /// entropy), <c>entropy.png</c> (H(c_n) per fact over iterations) and <c>weights.png</c> (c_n of fact 0 over its common
    /// then distinct tokens, at iterations 0, 2, …, 10 and the last) into <paramref name="directory"/>. Returns the files.</summary>
    public static IReadOnlyList<string> SaveRun(ScanSnapRun run, string directory)
    {
        Directory.CreateDirectory(directory);
        var facts = run.Data.Facts;
        var loss = new StringBuilder("iteration,loss\n");
        for (int t = 0; t < run.Loss.Length; t++) loss.Append(CultureInfo.InvariantCulture, $"{t},{run.Loss[t]:R}\n");
        var attention = new StringBuilder("iteration,fact,token,kind,probability,weight,entropy\n");
        var entropy = run.Entropy;
        for (int t = 0; t < run.Weights.Length; t++)
            for (int f = 0; f < facts.Count; f++)
                for (int i = 0; i < facts[f].Tokens.Length; i++)
                    attention.Append(CultureInfo.InvariantCulture,
                        $"{t},{f},{facts[f].Tokens[i]},{(i < facts[f].CommonCount ? "common" : "distinct")},{facts[f].Probabilities[i]:R},{run.Weights[t][f][i]:R},{entropy[t][f]:R}\n");
        var files = new List<string> { LabFiles.Write(directory, "loss.csv", loss.ToString()), LabFiles.Write(directory, "attention.csv", attention.ToString()) };

        var o = run.Options;
        string setting = string.Create(CultureInfo.InvariantCulture, $"η_Z {o.LearningRateZ:G4}, η_Y {o.LearningRateY:G4}, seed {o.Seed}");
        double[] iterations = Enumerable.Range(0, run.Weights.Length).Select(t => (double)t).ToArray();
        string entropyPng = Path.Combine(directory, "entropy.png");
        LinePlot.Save(entropyPng, $"Scan & Snap: attention entropy H(c_n) per sequence class ({setting})", "iteration", "entropy (nats)",
            Enumerable.Range(0, facts.Count).Select(f => new PlotSeries($"class {f} (query {facts[f].Query} → {facts[f].Next})", iterations,
                entropy.Select(e => e[f]).ToArray())));
        files.Add(entropyPng);

        int last = run.Weights.Length - 1;
        double[] position = Enumerable.Range(1, facts[0].Tokens.Length).Select(i => (double)i).ToArray();
        string weightsPng = Path.Combine(directory, "weights.png");
        LinePlot.Save(weightsPng, $"Scan & Snap: c_n of class 0, tokens 1–{facts[0].CommonCount} common, then distinct by rising P(l|m,n) ({setting})",
            "token of the class", "attention weight c_n(l)",
            Figure4Snapshots.Where(t => t < last).Append(last).Select(t => new PlotSeries($"iteration {t}", position, run.Weights[t][0])));
        files.Add(weightsPng);
        return files;
    }

    /// <summary>Writes <c>sweep.csv</c> (η_Z, η_Y/η_Z, seed, iteration, entropy), <c>sweep-final-entropy.png</c> (the entropy
    /// the attention froze at against η_Y/η_Z, one line per η_Z) and <c>sweep-entropy-lrz-X.png</c> per η_Z (entropy over
    /// iterations, one line per ratio: where each snaps). Returns the files.</summary>
    public static IReadOnlyList<string> SaveSweep(IReadOnlyList<ScanSnapSweepCell> cells, ScanSnapSweepOptions options, string directory)
    {
        Directory.CreateDirectory(directory);
        var csv = new StringBuilder("lr_z,lr_ratio,seed,iteration,mean_entropy\n");
        foreach (var cell in cells)
            for (int s = 0; s < cell.Entropy.Length; s++)
                for (int t = 0; t < cell.Entropy[s].Length; t++)
                    csv.Append(CultureInfo.InvariantCulture, $"{cell.LearningRateZ:R},{cell.Ratio:R},{options.Run.Seed + s},{t},{cell.Entropy[s][t]:R}\n");
        var files = new List<string> { LabFiles.Write(directory, "sweep.csv", csv.ToString()) };

        var data = options.Run.Data;
        string setting = string.Create(CultureInfo.InvariantCulture,
            $"#last {data.NumLast}, {data.NextPerLast} next each, {options.Seeds} seed{(options.Seeds > 1 ? "s" : "")}, {options.Run.Iterations} iterations");
        var byRate = cells.GroupBy(c => c.LearningRateZ).ToArray();
        string finalPng = Path.Combine(directory, "sweep-final-entropy.png");
        LinePlot.Save(finalPng, $"Scan & Snap: where attention snaps — final H(c_n) ({setting})", "η_Y / η_Z", "mean entropy of c_n at the end (nats)",
            byRate.Select(g => new PlotSeries(string.Create(CultureInfo.InvariantCulture, $"η_Z = {g.Key:G4}"),
                g.Select(c => c.Ratio).ToArray(), g.Select(c => c.Final).ToArray())), logX: true);
        files.Add(finalPng);
        foreach (var g in byRate)
        {
            string png = Path.Combine(directory, string.Create(CultureInfo.InvariantCulture, $"sweep-entropy-lrz-{g.Key:G4}.png"));
            LinePlot.Save(png, string.Create(CultureInfo.InvariantCulture, $"Scan & Snap: mean H(c_n) over training, η_Z = {g.Key:G4} ({setting})"),
                "iteration", "mean entropy of c_n (nats)",
                g.Select(c => new PlotSeries(string.Create(CultureInfo.InvariantCulture, $"η_Y/η_Z = {c.Ratio:G4}"),
                    Enumerable.Range(0, c.Entropy[0].Length).Select(t => (double)t).ToArray(), c.MeanEntropy)));
            files.Add(png);
        }
        return files;
    }
}
