using System.Globalization;
using Tern.Evaluation;
using Tern.Models;
using Tern.Runtime;

namespace Tern.Sparsity;

/// <summary>What <see cref="SparsityEvaluation.Run"/> measures.</summary>
public sealed record SparsityEvaluationOptions
{
    /// <summary>Fractions of MLP neurons computed, one perplexity each per rule.</summary>
    public IReadOnlyList<double> MlpActive { get; init; } = new[] { 0.5, 0.3, 0.2, 0.1, 0.05 };

    /// <summary>Windows of the perplexity runs.</summary>
    public PerplexityOptions Perplexity { get; init; } = new();

    /// <summary>Seed of the random selection.</summary>
    public long Seed { get; init; }
}

/// <summary>One perplexity: a rule at a fraction of the neurons (the dense run is rule null, fraction 1).</summary>
public sealed record SparsityEvaluationRow(SelectionRule? Rule, double MlpActive, int ActiveNeurons, double Perplexity, long ScoredTokens);

/// <summary>
/// DejaVu's quality question (§5.1): perplexity as fewer MLP neurons are computed, every token choosing its own, for the
/// learned predictors against the oracle (the true top-k: what a perfect predictor reaches) and random selection (the floor).
/// </summary>
public static class SparsityEvaluation
{
    /// <summary>Dense perplexity first, then each rule at each fraction; <paramref name="predictors"/> null leaves the
    /// learned rule out. The model's own <see cref="CausalLanguageModel.Sparsity"/> is restored afterwards.</summary>
    public static IReadOnlyList<SparsityEvaluationRow> Run(CausalLanguageModel model, IReadOnlyList<int> tokens, SparsityEvaluationOptions options,
        SparsityPredictors? predictors = null, IProgress<SparsityEvaluationRow>? progress = null, CancellationToken cancellation = default)
    {
        foreach (double f in options.MlpActive) new SparsityOptions { MlpActive = f }.Validate();
        int neurons = ModelIdentity.Of(model.Config).IntermediateSize;
        var previous = model.Sparsity;
        var rows = new List<SparsityEvaluationRow>();
        SparsityEvaluationRow Measure(SelectionRule? rule, double fraction, int active)
        {
            var result = Tern.Evaluation.Perplexity.Evaluate(model, tokens, options.Perplexity, cancellation: cancellation);
            var row = new SparsityEvaluationRow(rule, fraction, active, result.Perplexity, result.ScoredTokens);
            rows.Add(row);
            progress?.Report(row);
            return row;
        }
        try
        {
            model.Sparsity = null;
            Measure(null, 1.0, neurons);
            var rules = predictors is null ? new[] { SelectionRule.Oracle, SelectionRule.Random } : new[] { SelectionRule.Predicted, SelectionRule.Oracle, SelectionRule.Random };
            foreach (var rule in rules)
                foreach (double fraction in options.MlpActive)
                {
                    var sparsity = DejaVuSparsity.Create(model, new SparsityOptions { Rule = rule, MlpActive = fraction, Seed = options.Seed, EveryToken = true }, predictors);
                    model.Sparsity = sparsity;
                    Measure(rule, fraction, sparsity.ActiveNeurons);
                }
        }
        finally
        {
            model.Sparsity = previous;
        }
        return rows;
    }

    /// <summary>Writes the rows as CSV (atomically).</summary>
    public static void SaveCsv(string path, IReadOnlyList<SparsityEvaluationRow> rows)
    {
        string text = "rule,mlp_active,active_neurons,perplexity,scored_tokens\n" + string.Concat(rows.Select(r => string.Create(CultureInfo.InvariantCulture,
            $"{Name(r.Rule)},{r.MlpActive},{r.ActiveNeurons},{r.Perplexity:0.####},{r.ScoredTokens}\n")));
        AtomicFile.Write(path, s => s.Write(System.Text.Encoding.UTF8.GetBytes(text)));
    }

    /// <summary>Perplexity against the fraction of neurons computed, a line per rule and the dense level (PNG).</summary>
    public static void SavePlot(string path, string title, IReadOnlyList<SparsityEvaluationRow> rows)
    {
        var dense = rows.First(r => r.Rule is null);
        var fractions = rows.Where(r => r.Rule is not null).Select(r => r.MlpActive).Distinct().Order().ToArray();
        var series = rows.Where(r => r.Rule is not null).GroupBy(r => r.Rule).Select(g =>
            new PlotSeries(Name(g.Key), g.OrderBy(r => r.MlpActive).Select(r => r.MlpActive).ToArray(), g.OrderBy(r => r.MlpActive).Select(r => r.Perplexity).ToArray()))
            .Append(new PlotSeries("dense", fractions, fractions.Select(_ => dense.Perplexity).ToArray()));
        LinePlot.Save(path, title, "fraction of MLP neurons computed", "perplexity", series, logX: true, logY: true);
    }

    static string Name(SelectionRule? rule) => rule?.ToString().ToLowerInvariant() ?? "dense";
}
