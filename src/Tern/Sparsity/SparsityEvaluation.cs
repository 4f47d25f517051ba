using System.Globalization;
using Tern.Evaluation;
using Tern.Models;
using Tern.Runtime;
using Tern.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Sparsity;

/// <summary>What <see cref="SparsityEvaluation.Run"/> measures.</summary>
public sealed record SparsityEvaluationOptions
{
    /// <summary>Fractions of MLP neurons computed (every head kept), one row each per rule; skipped for models without a ReLU MLP.</summary>
    public IReadOnlyList<double> MlpActive { get; init; } = new[] { 0.5, 0.3, 0.2, 0.1, 0.05 };

    /// <summary>Fractions of attention heads projected (every neuron kept), one row each per rule.</summary>
    public IReadOnlyList<double> HeadsActive { get; init; } = new[] { 0.75, 0.5, 0.25 };

    /// <summary>The heads fraction of the rows that sparsify both (each of <see cref="MlpActive"/> with it: DejaVu's kernel
    /// study pairs MLP 5–20% with heads 50%); null: no such rows.</summary>
    public double? CombinedHeads { get; init; } = 0.5;

    /// <summary>Windows of the perplexity runs.</summary>
    public PerplexityOptions Perplexity { get; init; } = new();

    /// <summary>Seed of the random selection.</summary>
    public long Seed { get; init; }
}

/// <summary>What a row sparsifies.</summary>
public enum SparsityKind
{
    /// <summary>The dense run.</summary>
    Dense,
    /// <summary>MLP neurons only.</summary>
    Mlp,
    /// <summary>Attention heads only.</summary>
    Heads,
    /// <summary>Both at once.</summary>
    Both,
}

/// <summary>One measurement: a rule at a fraction of the neurons and of the heads (the dense run is rule null, fractions 1).</summary>
/// <param name="MlpRecall">Share of the units the oracle would compute (its top-k with a positive score: firing neurons) that
/// the rule computed, over every sparse layer and token (recall@k against the oracle); NaN where not measured.</param>
/// <param name="Accuracy">Multiple-choice accuracy (lm-eval's <c>acc</c>), or null without a multiple-choice task.</param>
public sealed record SparsityEvaluationRow(SparsityKind Kind, SelectionRule? Rule, double MlpActive, double HeadsActive, int ActiveNeurons, int ActiveHeads,
    double Perplexity, long ScoredTokens, double MlpRecall, double HeadRecall, double? Accuracy);

/// <summary>
/// DejaVu's quality question (§5.1): perplexity (and multiple-choice accuracy) as fewer MLP neurons and attention heads are
/// computed, every token choosing its own, for the learned predictors against the oracle (the true top-k: what a perfect
/// predictor reaches) and random selection (the floor), with each rule's recall of the oracle's choice.
/// </summary>
public static class SparsityEvaluation
{
    /// <summary>Dense first, then per kind (MLP, heads, both) each rule at each fraction; <paramref name="predictors"/> null
    /// leaves the learned rule out (heads-only predictors leave it out of the MLP rows). <paramref name="choices"/>: a
    /// multiple-choice task scored in every row. The model's own <see cref="CausalLanguageModel.Sparsity"/> is restored.</summary>
    public static IReadOnlyList<SparsityEvaluationRow> Run(CausalLanguageModel model, IReadOnlyList<int> tokens, SparsityEvaluationOptions options,
        SparsityPredictors? predictors = null, (ChoiceTask Task, TernTokenizer Tokenizer)? choices = null,
        IProgress<SparsityEvaluationRow>? progress = null, CancellationToken cancellation = default)
    {
        var settings = Settings(model, options, predictors).ToArray(); // validated before the first run
        var identity = ModelIdentity.Of(model.Config);
        var previous = model.Sparsity;
        var rows = new List<SparsityEvaluationRow>();
        try
        {
            model.Sparsity = null;
            rows.Add(Measure(model, tokens, options, choices, SparsityKind.Dense, null, null, identity.IntermediateSize, identity.Heads, cancellation));
            progress?.Report(rows[^1]);
            foreach (var (kind, sparsityOptions) in settings)
            {
                using var sparsity = DejaVuSparsity.Create(model, sparsityOptions, predictors);
                // The oracle's recall is 1 by definition: the meter (which costs the dense products) measures the other rules.
                var meter = sparsityOptions.Rule == SelectionRule.Oracle ? null : new RecallMeter(sparsity);
                model.Sparsity = (IContextualSparsity?)meter ?? sparsity;
                rows.Add(Measure(model, tokens, options, choices, kind, sparsityOptions, meter, sparsity.ActiveNeurons, sparsity.ActiveHeads, cancellation));
                progress?.Report(rows[^1]);
            }
        }
        finally
        {
            model.Sparsity = previous;
        }
        return rows;
    }

    /// <summary>The sparse rows' settings, in order, each checked against the model.</summary>
    static IEnumerable<(SparsityKind, SparsityOptions)> Settings(CausalLanguageModel model, SparsityEvaluationOptions options, SparsityPredictors? predictors)
    {
        bool relu = ModelIdentity.Of(model.Config).HasReluMlp, mlpPredictors = predictors?.Manifest.Mlp == true;
        var rules = new[] { SelectionRule.Predicted, SelectionRule.Oracle, SelectionRule.Random };
        var kinds = new List<(SparsityKind Kind, IEnumerable<(double Mlp, double Heads)> Fractions)>
        {
            (SparsityKind.Mlp, relu ? options.MlpActive.Select(f => (f, 1.0)) : Array.Empty<(double, double)>()),
            (SparsityKind.Heads, options.HeadsActive.Select(f => (1.0, f))),
            (SparsityKind.Both, relu && options.CombinedHeads is { } h ? options.MlpActive.Select(f => (f, h)) : Array.Empty<(double, double)>()),
        };
        var settings = new List<(SparsityKind, SparsityOptions)>();
        foreach (var (kind, fractions) in kinds)
            foreach (var rule in rules.Where(r => r != SelectionRule.Predicted || (predictors is not null && (kind == SparsityKind.Heads || mlpPredictors))))
                foreach (var (mlp, heads) in fractions)
                {
                    var s = new SparsityOptions { Rule = rule, MlpActive = mlp, HeadsActive = heads, Seed = options.Seed, EveryToken = true };
                    s.Validate();
                    settings.Add((kind, s));
                }
        return settings;
    }

    static SparsityEvaluationRow Measure(CausalLanguageModel model, IReadOnlyList<int> tokens, SparsityEvaluationOptions options,
        (ChoiceTask Task, TernTokenizer Tokenizer)? choices, SparsityKind kind, SparsityOptions? sparsity, RecallMeter? meter,
        int neurons, int heads, CancellationToken cancellation)
    {
        var perplexity = Tern.Evaluation.Perplexity.Evaluate(model, tokens, options.Perplexity, cancellation: cancellation);
        // Recall over the perplexity run only: the multiple-choice run adds no new kind of token.
        var (mlpRecall, headRecall) = meter is null ? (sparsity is null ? double.NaN : 1.0, sparsity is null ? double.NaN : 1.0) : meter.Recalls();
        if (sparsity is not null && sparsity.MlpActive >= 1) mlpRecall = double.NaN;
        if (sparsity is not null && sparsity.HeadsActive >= 1) headRecall = double.NaN;
        double? accuracy = choices is { } c ? MultipleChoice.Evaluate(model, c.Tokenizer, c.Task, cancellation: cancellation).Accuracy : null;
        return new SparsityEvaluationRow(kind, sparsity?.Rule, sparsity?.MlpActive ?? 1, sparsity?.HeadsActive ?? 1, neurons, heads,
            perplexity.Perplexity, perplexity.ScoredTokens, mlpRecall, headRecall, accuracy);
    }

    /// <summary>
    /// Wraps a sparsity and counts, for every selection it makes, how many of the oracle's units it holds: the oracle's top-k
    /// by the true scores (pre-activations, head output norms), those with a positive score only — a silent ReLU neuron
    /// outside the selection costs nothing.
    /// </summary>
    sealed class RecallMeter(IContextualSparsity inner) : IContextualSparsity
    {
        double neuronHits, neuronTotal, headHits, headTotal;

        public (double Mlp, double Heads) Recalls() => (neuronTotal > 0 ? neuronHits / neuronTotal : double.NaN, headTotal > 0 ? headHits / headTotal : double.NaN);

        public ISparsityStep? ForStep(ForwardBatch batch) => inner.ForStep(batch) is { } step ? new Step(this, step) : null;

        public bool SkipsNeurons => inner.SkipsNeurons;

        static (double Hits, double Total) Overlap(Tensor selected, Tensor scores)
        {
            using var scope = torch.NewDisposeScope();
            var top = scores.topk((int)selected.size(-1), dim: -1);
            var truth = torch.zeros(scores.shape, ScalarType.Bool, scores.device).scatter_(-1, top.indexes, top.values.gt(0));
            return (truth.gather(-1, selected).sum().item<long>(), truth.sum().item<long>());
        }

        sealed class Step(RecallMeter owner, ISparsityStep inner) : ISparsityStep
        {
            public void LayerInput(int layer, Tensor hidden) => inner.LayerInput(layer, hidden);

            public void EndStep() => inner.EndStep();

            public Tensor? Heads(int layer, Func<Tensor> headOutputs)
            {
                if (inner.Heads(layer, headOutputs) is not { } selected) return null;
                var (hits, total) = Overlap(selected, headOutputs().to(ScalarType.Float32).norm(-1));
                (owner.headHits, owner.headTotal) = (owner.headHits + hits, owner.headTotal + total);
                return selected;
            }

            public Tensor? Neurons(int layer, Tensor mlpInput, Func<Tensor> preActivations)
            {
                if (inner.Neurons(layer, mlpInput, preActivations) is not { } selected) return null;
                var (hits, total) = Overlap(selected, preActivations());
                (owner.neuronHits, owner.neuronTotal) = (owner.neuronHits + hits, owner.neuronTotal + total);
                return selected;
            }
        }
    }

    /// <summary>Writes the rows as CSV (atomically).</summary>
    public static void SaveCsv(string path, IReadOnlyList<SparsityEvaluationRow> rows)
    {
        static string Number(double x) => double.IsNaN(x) ? "" : x.ToString("0.####", CultureInfo.InvariantCulture);
        string text = "kind,rule,mlp_active,heads_active,active_neurons,active_heads,perplexity,scored_tokens,mlp_recall,head_recall,accuracy\n" +
            string.Concat(rows.Select(r => string.Create(CultureInfo.InvariantCulture,
                $"{Name(r.Kind)},{Name(r.Rule)},{r.MlpActive},{r.HeadsActive},{r.ActiveNeurons},{r.ActiveHeads},{Number(r.Perplexity)},{r.ScoredTokens},{Number(r.MlpRecall)},{Number(r.HeadRecall)},{Number(r.Accuracy ?? double.NaN)}\n")));
        AtomicFile.Write(path, s => s.Write(System.Text.Encoding.UTF8.GetBytes(text)));
    }

    /// <summary>Perplexity against the fraction of units computed, one PNG per kind measured (<c>sparsity-mlp.png</c>,
    /// <c>sparsity-heads.png</c>, <c>sparsity-both.png</c> in <paramref name="directory"/>), a line per rule and the dense
    /// level; returns the files written.</summary>
    public static IReadOnlyList<string> SavePlots(string directory, string title, IReadOnlyList<SparsityEvaluationRow> rows)
    {
        var dense = rows.First(r => r.Kind == SparsityKind.Dense);
        var written = new List<string>();
        foreach (var kind in new[] { SparsityKind.Mlp, SparsityKind.Heads, SparsityKind.Both })
        {
            var sparse = rows.Where(r => r.Kind == kind).ToArray();
            if (sparse.Length == 0) continue;
            Func<SparsityEvaluationRow, double> x = kind == SparsityKind.Heads ? r => r.HeadsActive : r => r.MlpActive;
            var fractions = sparse.Select(x).Distinct().Order().ToArray();
            var series = sparse.GroupBy(r => r.Rule).Select(g => new PlotSeries(Name(g.Key), g.OrderBy(x).Select(x).ToArray(), g.OrderBy(x).Select(r => r.Perplexity).ToArray()))
                .Append(new PlotSeries("dense", fractions, fractions.Select(_ => dense.Perplexity).ToArray()));
            string xLabel = kind switch
            {
                SparsityKind.Mlp => "fraction of MLP neurons computed",
                SparsityKind.Heads => "fraction of attention heads computed",
                _ => $"fraction of MLP neurons computed, {sparse[0].HeadsActive:P0} of the heads",
            };
            string path = Path.Combine(directory, $"sparsity-{Name(kind)}.png");
            LinePlot.Save(path, title, xLabel, "perplexity", series, logX: true, logY: true);
            written.Add(path);
        }
        return written;
    }

    /// <summary>The rule's name as the CSV and the plots write it ("dense" for none).</summary>
    public static string Name(SelectionRule? rule) => rule?.ToString().ToLowerInvariant() ?? "dense";

    /// <summary>The kind's name as the CSV and the plot files write it.</summary>
    public static string Name(SparsityKind kind) => kind.ToString().ToLowerInvariant();
}
