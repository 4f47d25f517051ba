using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Tern.Caching;
using Tern.Evaluation;
using Tern.Models;
using Tern.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Labs;

/// <summary>
/// JoMA's measurements on a real model during training (as the paper does on WikiText and on Pythia checkpoints): per layer,
/// the attention entropy on a fixed probe window and the stable rank of the MLP's weights, appended to a CSV at each call of
/// <see cref="Record"/> and plotted over steps. JoMA predicts that attention first sparsifies (entropy falls) and then becomes
/// denser again. Attention is read through a cache policy (<see cref="IAttentionObserver"/>), the model untouched.
/// </summary>
public sealed class TrainingDynamicsProbe
{
    /// <summary>The CSV's name in the probe's folder.</summary>
    public const string CsvName = "dynamics.csv";

    readonly IReadOnlyList<IReadOnlyList<int>> windows;

    TrainingDynamicsProbe(string csv, IReadOnlyList<IReadOnlyList<int>> windows)
    {
        CsvPath = csv;
        this.windows = windows;
    }

    /// <summary>The CSV the probe appends to: <c>step,layer,attention_entropy,uniform_entropy,stable_rank_KIND…</c>, one row
    /// per layer per recorded step.</summary>
    public string CsvPath { get; }

    /// <summary>A probe writing to <paramref name="directory"/> that measures attention on <paramref name="windows"/> (equal-length
    /// token sequences, the same at every step). A fresh run (<paramref name="resumedStep"/> null) starts a new CSV; a run resumed
    /// at a step keeps the rows up to it and drops later ones, which it computes again.</summary>
    public static TrainingDynamicsProbe Create(string directory, IReadOnlyList<IReadOnlyList<int>> windows, int? resumedStep = null)
    {
        if (windows.Count == 0 || windows[0].Count < 2 || windows.Any(w => w.Count != windows[0].Count))
            throw new ArgumentException("the probe needs one or more windows of equal length ≥ 2.");
        Directory.CreateDirectory(directory);
        string csv = Path.Combine(directory, CsvName);
        if (File.Exists(csv))
        {
            var lines = File.ReadAllLines(csv);
            var kept = resumedStep is { } step
                ? lines.Take(1).Concat(lines.Skip(1).Where(l => l.Length > 0 && int.Parse(l.Split(',')[0], CultureInfo.InvariantCulture) <= step))
                : [];
            LabFiles.Write(directory, CsvName, string.Concat(kept.Select(l => l + "\n")));
        }
        return new TrainingDynamicsProbe(csv, windows);
    }

    /// <summary>The first <paramref name="count"/> validation-style windows of <paramref name="tokens"/>: consecutive,
    /// non-overlapping, <paramref name="length"/> tokens each (<see cref="TokenStream.FixedBatch"/>), so every step sees the same text.</summary>
    public static IReadOnlyList<IReadOnlyList<int>> Windows(TokenStream tokens, int count, int length, int? startToken = null)
    {
        using var scope = torch.NewDisposeScope();
        long[] ids = tokens.FixedBatch(0, count, length, torch.CPU, startToken).Inputs.data<long>().ToArray();
        return Enumerable.Range(0, count).Select(b => (IReadOnlyList<int>)ids.Skip(b * length).Take(length).Select(i => (int)i).ToArray()).ToArray();
    }

    /// <summary>Measures <paramref name="model"/> and appends its rows for <paramref name="step"/>.</summary>
    public void Record(CausalLanguageModel model, int step)
    {
        double[] entropy = AttentionEntropy(model, windows);
        var ranks = MlpStableRanks(model);
        string[] kinds = ranks.Select(r => r.Kind).Distinct().ToArray();
        var text = new StringBuilder();
        if (!File.Exists(CsvPath) || new FileInfo(CsvPath).Length == 0)
            text.Append("step,layer,attention_entropy,uniform_entropy").Append(string.Concat(kinds.Select(k => ",stable_rank_" + k))).Append('\n');
        double uniform = UniformCausalEntropy(windows[0].Count);
        for (int layer = 0; layer < entropy.Length; layer++)
        {
            text.Append(CultureInfo.InvariantCulture, $"{step},{layer},{entropy[layer]:R},{uniform:R}");
            foreach (string kind in kinds)
                text.Append(',').Append(ranks.FirstOrDefault(r => r.Layer == layer && r.Kind == kind).StableRank.ToString("R", CultureInfo.InvariantCulture));
            text.Append('\n');
        }
        File.AppendAllText(CsvPath, text.ToString());
    }

    /// <summary>Per layer, the mean attention entropy −Σ_k a_qk log a_qk over windows, heads and query positions (the entropy
    /// of each head's row, then averaged: JoMA's metric), from one causal forward pass over <paramref name="windows"/>.</summary>
    public static double[] AttentionEntropy(CausalLanguageModel model, IReadOnlyList<IReadOnlyList<int>> windows)
    {
        int length = windows[0].Count;
        var probe = new EntropyProbe(model.Info.Layers);
        using (var cache = model.CreateCache(windows.Count, length, new KvCacheConfig(probe), maxStepTokens: length))
        using (var scope = torch.NewDisposeScope())
            model.Forward(ForwardBatch.LeftPadded(windows, model.Device, lastPositionOnly: true), cache);
        return probe.Sums.Select((s, i) => s / probe.Counts[i]).ToArray();
    }

    /// <summary>The attention entropy of uniform causal attention over <paramref name="length"/> positions,
    /// (1/T) Σ_{i=1..T} ln i: the top of the range (2.6325 for 35 positions).</summary>
    public static double UniformCausalEntropy(int length) => Enumerable.Range(1, length).Average(i => Math.Log(i));

    /// <summary>srank(W) = ‖W‖_F² / ‖W‖₂², between 1 (rank one) and rank(W); fp32 singular values.</summary>
    public static double StableRank(Tensor matrix)
    {
        using var scope = torch.NewDisposeScope();
        var s = torch.linalg.svdvals(matrix.detach().to(ScalarType.Float32)).to(ScalarType.Float64);
        double top = s[0].item<double>();
        return top == 0 ? 0 : s.pow(2).sum().item<double>() / (top * top);
    }

    /// <summary>Hugging Face names of MLP matrices by role: "gate" and "up" (the lower, hidden-side projections) and "down".</summary>
    static readonly (string Suffix, string Kind)[] MlpNames =
    [
        ("mlp.gate_proj.weight", "gate"), ("mlp.up_proj.weight", "up"), ("mlp.down_proj.weight", "down"), // Llama, Mistral, Qwen2
        ("fc1.weight", "up"), ("fc2.weight", "down"),                                                       // OPT
        ("mlp.dense_h_to_4h.weight", "up"), ("mlp.dense_4h_to_h.weight", "down"),                         // GPT-NeoX
        ("mlp.c_fc.weight", "up"), ("mlp.c_proj.weight", "down"),                                           // GPT-2
    ];

    static readonly Regex LayerIndex = new(@"\.(\d+)\.", RegexOptions.Compiled);

    /// <summary>Stable rank of every MLP matrix of a trainable model, by layer and role.</summary>
    public static IReadOnlyList<(int Layer, string Kind, double StableRank)> MlpStableRanks(CausalLanguageModel model) =>
        model.StateDict()
            .Select(t => (t.Name, t.Tensor, Role: MlpNames.FirstOrDefault(n => t.Name.EndsWith("." + n.Suffix, StringComparison.Ordinal)).Kind))
            .Where(t => t.Role is not null && LayerIndex.Match(t.Name).Success)
            .Select(t => (int.Parse(LayerIndex.Match(t.Name).Groups[1].Value, CultureInfo.InvariantCulture), t.Role!, StableRank(t.Tensor)))
            .ToArray();

    /// <summary>Draws a probe CSV: <c>attention-entropy.png</c> (one line per layer over steps, and the uniform value) and
    /// <c>stable-rank-KIND.png</c> per MLP role, next to the CSV. Returns the files written.</summary>
    public static IReadOnlyList<string> Plot(string csv, string title)
    {
        var lines = File.ReadAllLines(csv).Where(l => l.Length > 0).ToArray();
        if (lines.Length < 2) throw new InvalidDataException($"{csv}: no probe rows to plot.");
        string[] header = lines[0].Split(',');
        var rows = lines.Skip(1).Select(l => l.Split(',').Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToArray()).ToArray();
        int Column(string name) => Array.IndexOf(header, name) is var i and >= 0 ? i : throw new InvalidDataException($"{csv}: no column '{name}'.");
        var layers = rows.Select(r => (int)r[Column("layer")]).Distinct().Order().ToArray();
        PlotSeries[] PerLayer(int column) => layers.Select(layer =>
        {
            var mine = rows.Where(r => (int)r[Column("layer")] == layer).OrderBy(r => r[0]).ToArray();
            return new PlotSeries($"layer {layer}", mine.Select(r => r[0]).ToArray(), mine.Select(r => r[column]).ToArray());
        }).ToArray();

        string dir = Path.GetDirectoryName(Path.GetFullPath(csv))!;
        var written = new List<string>();
        var steps = rows.Select(r => r[0]).Distinct().Order().ToArray();
        var uniform = new PlotSeries("uniform attention", steps, steps.Select(_ => rows[0][Column("uniform_entropy")]).ToArray());
        string entropyPng = Path.Combine(dir, "attention-entropy.png");
        LinePlot.Save(entropyPng, $"{title}: attention entropy per layer (probe window)", "step", "mean row entropy (nats)",
            PerLayer(Column("attention_entropy")).Append(uniform));
        written.Add(entropyPng);
        foreach (string column in header.Where(h => h.StartsWith("stable_rank_", StringComparison.Ordinal)))
        {
            string kind = column["stable_rank_".Length..];
            string png = Path.Combine(dir, $"stable-rank-{kind}.png");
            LinePlot.Save(png, $"{title}: stable rank of the MLP {kind} weight", "step", "‖W‖F² / ‖W‖2²", PerLayer(Column(column)));
            written.Add(png);
        }
        return written;
    }

    /// <summary>The full cache, asking for probabilities and summing each layer's row entropies.</summary>
    sealed class EntropyProbe(int layers) : IKvCachePolicy, IAttentionObserver
    {
        public double[] Sums { get; } = new double[layers];
        public long[] Counts { get; } = new long[layers];
        public string Name => "entropy-probe";
        public bool AppendOnly => false; // asks for the explicit path, which materialises probabilities
        public int Capacity(int maxSequenceLength, int maxStepTokens) => maxSequenceLength;
        public void BeforeAppend(LayerKvCache layer, int incomingTokens) { }
        public void AfterStep(LayerKvCache layer) { }

        public void ObserveAttention(LayerKvCache layer, Tensor probabilities)
        {
            using var scope = torch.NewDisposeScope();
            // Masked keys have probability 0 and add 0 log 0 = 0 (xlogy).
            Sums[layer.Layer] -= probabilities.xlogy(probabilities).sum().to(ScalarType.Float64).item<double>();
            Counts[layer.Layer] += probabilities.size(0) * probabilities.size(1) * probabilities.size(2);
        }
    }
}
