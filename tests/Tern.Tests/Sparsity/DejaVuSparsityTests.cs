using Tern.Generation;
using Tern.Models;
using Tern.Runtime;
using Tern.Sparsity;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Sparsity;

/// <summary>DejaVu's sparse MLP on the decode path: the layers compute only the selected neurons (gathered rows of the
/// up-projection, columns of the down-projection), and a selection that holds every neuron that fires gives the dense
/// result — the sparse products are exact, only the selection can lose anything.</summary>
public sealed class DejaVuSparsityTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    internal static readonly IReadOnlyList<int>[] Prompts = { new[] { 5, 17, 42, 9, 3 }, new[] { 7, 7, 100, 2 } };

    /// <summary>A fixture in fp32 on the CPU.</summary>
    internal static CausalLanguageModel Load(string fixture) => CausalLanguageModel.Load(Fixtures.ModelDir(fixture), new ModelLoadOptions { Device = DeviceKind.Cpu, DType = ModelDType.Float32 });

    /// <summary>Greedy generation from two prompts of different lengths, with every step's logits.</summary>
    internal static GenerationResult Generate(CausalLanguageModel model, int steps = 8) =>
        new Tern.Generation.Generator(model).GenerateTokens(Prompts, new GenerationOptions { MaxNewTokens = steps, IgnoreEos = true, OutputLogits = true }, Ct);

    /// <summary><c>--sparsity</c>'s items: fractions, rule, seed, and the side-stream overlap of lookahead predictors (on unless
    /// turned off; it changes no choice, only where the predictors run).</summary>
    [Fact]
    public void SpecificationsParseEveryItem()
    {
        var parsed = SparsityOptions.Parse("mlp=0.1, heads=0.5,rule=Random,seed=7,overlap=false");
        Assert.Equal(new SparsityOptions { MlpActive = 0.1, HeadsActive = 0.5, Rule = SelectionRule.Random, Seed = 7, OverlapPredictors = false }, parsed);
        Assert.True(SparsityOptions.Parse("heads=0.25").OverlapPredictors);
    }

    /// <summary>The selection a step takes: the k largest scores of each row, their indices in ascending order.</summary>
    [Fact]
    public void TopKAscendingKeepsTheLargestScoresInIndexOrder()
    {
        using var scope = torch.NewDisposeScope();
        var scores = torch.randn(new long[] { 3, 2, 500 }, generator: new TorchSharp.torch.Generator(5));
        var chosen = DejaVuSparsity.TopKAscending(scores, 37);
        Assert.Equal(new long[] { 3, 2, 37 }, chosen.shape);
        float[] all = scores.data<float>().ToArray();
        long[] picked = chosen.data<long>().ToArray();
        for (int row = 0; row < 6; row++)
        {
            var expected = Enumerable.Range(0, 500).OrderByDescending(i => all[row * 500 + i]).Take(37).Select(i => (long)i).Order();
            Assert.Equal(expected, picked.Skip(row * 37).Take(37));
        }
    }

    /// <summary>Counts, over every decode step and layer, the most neurons any sequence fires (through the seam: the layers
    /// hand the true pre-activations to whoever asks), and leaves the step dense.</summary>
    sealed class FiringCounter : IContextualSparsity, ISparsityStep
    {
        public int MostFiring { get; private set; }
        public ISparsityStep? ForStep(ForwardBatch batch) => this;
        public void LayerInput(int layer, Tensor hidden) { }
        public Tensor? Heads(int layer, Func<Tensor> headOutputs) => null;
        public Tensor? Neurons(int layer, Tensor mlpInput, Func<Tensor> preActivations)
        {
            using var firing = preActivations().gt(0).sum(-1);
            MostFiring = Math.Max(MostFiring, (int)firing.max().item<long>());
            return null;
        }
    }

    /// <summary>With <see cref="SparsityOptions.EveryToken"/> the prefill is sparse too, each token choosing its own neurons
    /// (how quality is measured); otherwise decode steps only.</summary>
    [Theory]
    [InlineData("llama-linear-relu-f16", false)] // a gated MLP: a neuron is silent when relu(gate) is
    [InlineData("llama-linear-relu-f16", true)]
    [InlineData("opt-prenorm", false)]
    [InlineData("opt-prenorm", true)]
    public void AnOracleHoldingEveryFiringNeuronGivesTheDenseLogits(string fixture, bool everyToken)
    {
        using var model = Load(fixture);
        var dense = Generate(model);
        var counter = new FiringCounter();
        model.Sparsity = counter;
        Generate(model);
        int neurons = ModelIdentity.Of(model.Config).IntermediateSize;
        Assert.InRange(counter.MostFiring, 1, neurons - 1); // some neurons are silent, so the sparse path computes fewer
        model.Sparsity = DejaVuSparsity.Create(model, new SparsityOptions { Rule = SelectionRule.Oracle, MlpActive = (double)counter.MostFiring / neurons, EveryToken = everyToken });
        var sparse = Generate(model);
        Assert.Equal(dense.Sequences.Select(s => s.Tokens), sparse.Sequences.Select(s => s.Tokens));
        for (int i = 0; i < dense.Logits!.Count; i++)
            Assert.True(dense.Logits[i].allclose(sparse.Logits![i], rtol: 1e-5, atol: 1e-5), $"step {i}");
    }

    /// <summary>At 10% of the neurons the oracle's logits stay nearer the dense ones than random selection's, token by token.</summary>
    [Fact]
    public void TheOracleIsNearerTheDenseLogitsThanRandomSelection()
    {
        using var model = Load("opt-prenorm");
        var dense = Generate(model, steps: 1).Logits![0];
        double Distance(SelectionRule rule)
        {
            model.Sparsity = DejaVuSparsity.Create(model, new SparsityOptions { Rule = rule, MlpActive = 0.1, Seed = 5, EveryToken = true });
            using var sparse = Generate(model, steps: 1).Logits![0];
            return (sparse - dense).square().mean().item<float>();
        }
        double oracle = Distance(SelectionRule.Oracle), random = Distance(SelectionRule.Random);
        Assert.True(oracle < random, $"oracle {oracle} vs random {random}");
    }

    [Fact]
    public void FewerNeuronsThanFireChangeTheLogitsAndPrefillStaysDense()
    {
        using var model = Load("opt-prenorm");
        var dense = Generate(model, steps: 4);
        foreach (var rule in new[] { SelectionRule.Oracle, SelectionRule.Random })
        {
            model.Sparsity = DejaVuSparsity.Create(model, new SparsityOptions { Rule = rule, MlpActive = 0.1, Seed = 3 });
            var sparse = Generate(model, steps: 4);
            Assert.True(dense.Logits![0].allclose(sparse.Logits![0]), $"{rule}: the prefill runs dense");
            Assert.False(dense.Logits[1].allclose(sparse.Logits[1], rtol: 1e-4, atol: 1e-4), $"{rule}: 10% of the neurons is not the dense step");
            model.Sparsity = DejaVuSparsity.Create(model, new SparsityOptions { Rule = rule, MlpActive = 0.1, Seed = 3, EveryToken = true });
            Assert.False(dense.Logits[0].allclose(Generate(model, steps: 1).Logits![0], rtol: 1e-4, atol: 1e-4), $"{rule}: a sparse prefill");
        }
    }

    /// <summary>Learned predictors (trained on the model's own activations) drive the selection: with lookahead a layer's
    /// neurons are chosen from the previous layer's input (or MLP-block input), before the layer runs; without it from the
    /// layer's own MLP-block input (the released MLP training's pairing).</summary>
    [Theory]
    [InlineData(true, false)]
    [InlineData(true, true)]
    [InlineData(false, true)]
    public void TrainedPredictorsSelectTheNeuronsOfDecodeSteps(bool lookahead, bool mlpInput)
    {
        using var model = Load("llama-linear-relu-f16");
        var random = new Random(1);
        var tokens = Enumerable.Range(0, 2048).Select(_ => random.Next(model.Info.VocabSize)).ToArray();
        using var data = ActivationCollector.Collect(model, tokens, new CollectOptions { MaxTokens = 1024, SequenceLength = 64 }, cancellation: Ct);
        using var predictors = PredictorTrainer.Train(data, new PredictorTrainingOptions { Epochs = 3, Lookahead = lookahead, MlpReadsMlpInput = mlpInput }, cancellation: Ct);
        Assert.Equal((lookahead, mlpInput), (predictors.Manifest.Lookahead, predictors.Manifest.MlpReadsMlpInput));
        model.Sparsity = DejaVuSparsity.Create(model, new SparsityOptions { Rule = SelectionRule.Predicted, MlpActive = 0.5 }, predictors);
        var sparse = Generate(model, steps: 6);
        Assert.All(sparse.Sequences, s => Assert.Equal(6, s.Tokens.Count));
        model.Sparsity = null;
        var dense = Generate(model, steps: 6);
        Assert.False(dense.Logits![1].allclose(sparse.Logits![1], rtol: 1e-4, atol: 1e-4), "half the neurons is not the dense step");
        // Every neuron (k = all) is the dense step, exactly.
        model.Sparsity = DejaVuSparsity.Create(model, new SparsityOptions { Rule = SelectionRule.Predicted, MlpActive = 1.0 }, predictors);
        var all = Generate(model, steps: 6);
        for (int i = 0; i < dense.Logits!.Count; i++) Assert.True(dense.Logits[i].allclose(all.Logits![i], rtol: 0, atol: 0), $"step {i}");
        Assert.Throws<OptionException>(() => DejaVuSparsity.Create(model, new SparsityOptions { Rule = SelectionRule.Predicted, MlpActive = 0.5 }));
        // Activations of an older Tern hold no MLP-block inputs: predictors that read them are refused by name.
        var old = new ActivationData(data.Manifest, data.Layers.Select(l => l with { MlpInputs = null }).ToArray());
        var e = Assert.Throws<SparsityException>(() => PredictorTrainer.Train(old, new PredictorTrainingOptions { Epochs = 1, MlpReadsMlpInput = true }, cancellation: Ct));
        Assert.Contains("collect them again", e.Message);
    }

    /// <summary>The quality table: dense first, then per kind (MLP, heads, both) each rule per fraction, with each rule's recall
    /// of the oracle's units; the model's own sparsity setting restored, CSV and a PNG per kind written. (On this random-weight
    /// model perplexity says little; the oracle's advantage is tested on logits.)</summary>
    [Fact]
    public void TheEvaluationComparesTheOracleWithRandomSelection()
    {
        using var model = Load("opt-prenorm");
        var random = new Random(2);
        var tokens = Enumerable.Range(0, 300).Select(_ => random.Next(model.Info.VocabSize)).ToArray();
        var rows = SparsityEvaluation.Run(model, tokens, new SparsityEvaluationOptions
        {
            MlpActive = new[] { 0.5, 0.1 }, HeadsActive = new[] { 0.5 }, CombinedHeads = 0.25,
            Perplexity = new Tern.Evaluation.PerplexityOptions { Window = 64, Stride = 32 }, Seed = 1,
        }, cancellation: Ct);
        Assert.Null(model.Sparsity);
        Assert.Equal(11, rows.Count);
        var dense = rows[0];
        Assert.Equal((SparsityKind.Dense, (SelectionRule?)null), (dense.Kind, dense.Rule));
        Assert.All(rows, r => Assert.True(double.IsFinite(r.Perplexity) && r.ScoredTokens == 299 && r.Accuracy is null));
        var (oracle, rand) = (SelectionRule.Oracle, SelectionRule.Random);
        Assert.Equal(new (SparsityKind, SelectionRule?)[]
        {
            (SparsityKind.Dense, null), (SparsityKind.Mlp, oracle), (SparsityKind.Mlp, oracle), (SparsityKind.Mlp, rand), (SparsityKind.Mlp, rand),
            (SparsityKind.Heads, oracle), (SparsityKind.Heads, rand),
            (SparsityKind.Both, oracle), (SparsityKind.Both, oracle), (SparsityKind.Both, rand), (SparsityKind.Both, rand),
        }, rows.Select(r => (r.Kind, r.Rule)));
        var tenth = rows.Single(r => r.Kind == SparsityKind.Mlp && r.Rule == oracle && r.MlpActive == 0.1);
        Assert.Equal((7, 4), (tenth.ActiveNeurons, tenth.ActiveHeads)); // ⌈0.1 · 64⌉, every head
        var both = rows.Single(r => r.Kind == SparsityKind.Both && r.Rule == rand && r.MlpActive == 0.5);
        Assert.Equal((32, 1), (both.ActiveNeurons, both.ActiveHeads)); // ⌈0.5 · 64⌉, ⌈0.25 · 4⌉
        // Recall of the oracle's choice: 1 for the oracle itself, about k/units for random selection; NaN where nothing is sparse.
        Assert.All(rows.Where(r => r.Rule == oracle), r => Assert.True(r.Kind == SparsityKind.Heads ? double.IsNaN(r.MlpRecall) : r.MlpRecall == 1));
        var randomHeads = rows.Single(r => r.Kind == SparsityKind.Heads && r.Rule == rand);
        Assert.InRange(randomHeads.HeadRecall, 0.3, 0.7); // 2 of 4 heads at random
        Assert.True(double.IsNaN(randomHeads.MlpRecall));
        Assert.InRange(rows.Single(r => r.Kind == SparsityKind.Mlp && r.Rule == rand && r.MlpActive == 0.1).MlpRecall, 0.0, 0.3);
        using var dir = new TempDir();
        SparsityEvaluation.SaveCsv(Path.Combine(dir.Path, "sparsity.csv"), rows);
        var csv = File.ReadAllLines(Path.Combine(dir.Path, "sparsity.csv"));
        Assert.Equal(12, csv.Length);
        Assert.StartsWith("kind,rule,mlp_active,heads_active,active_neurons,active_heads,perplexity,scored_tokens,mlp_recall,head_recall,accuracy", csv[0]);
        var plots = SparsityEvaluation.SavePlots(dir.Path, "opt-prenorm", rows);
        Assert.Equal(new[] { "sparsity-mlp.png", "sparsity-heads.png", "sparsity-both.png" }, plots.Select(Path.GetFileName));
        Assert.All(plots, p => Assert.True(new FileInfo(p).Length > 2000));
    }

    [Fact]
    public void ModelsWithoutAReluMlpAndBadFractionsAreRefused()
    {
        using var swiglu = Load("llama-gqa");
        var e = Assert.ThrowsAny<Exception>(() => DejaVuSparsity.Create(swiglu, new SparsityOptions { Rule = SelectionRule.Oracle, MlpActive = 0.1 }));
        Assert.Contains("ReLU", e.Message);
        using var opt = Load("opt-prenorm");
        var bad = Assert.Throws<OptionException>(() => DejaVuSparsity.Create(opt, new SparsityOptions { Rule = SelectionRule.Oracle, MlpActive = 0 }));
        Assert.Equal(TernOption.SparsityMlp, bad.Option);
    }
}
