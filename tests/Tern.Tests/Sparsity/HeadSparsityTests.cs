using Tern.Generation;
using Tern.Caching;
using Tern.Models;
using Tern.Runtime;
using Tern.Sparsity;
using TorchSharp;
using static TorchSharp.torch;
using static Tern.Tests.Sparsity.DejaVuSparsityTests;

namespace Tern.Tests.Sparsity;

/// <summary>DejaVu's head sparsity: the output projection reads only the kept heads' columns (a skipped head's output counts
/// as zero), the keys and values of every head are still cached, and keeping every head is the dense model.</summary>
public sealed class HeadSparsityTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Keeps the same heads for every token of the layers it names (all when null), in the steps <see cref="Sparse"/> allows.</summary>
    sealed class FixedHeads(long[] heads, int? onlyLayer = null) : IContextualSparsity, ISparsityStep
    {
        long rows;
        public Func<ForwardBatch, bool> Sparse { get; init; } = _ => true;
        /// <summary>Hands the heads out before attention too, as predictors do: decode steps then compute only theirs.</summary>
        public bool Ahead { get; init; }
        public ISparsityStep? ForStep(ForwardBatch batch)
        {
            rows = batch.InputIds.shape[0];
            return Sparse(batch) ? this : null;
        }
        public void LayerInput(int layer, Tensor hidden) { }
        public Tensor? HeadsAhead(int layer) => Ahead && (onlyLayer is null || layer == onlyLayer)
            ? torch.tensor(heads).expand(rows, 1, heads.Length).contiguous() : null;
        public Tensor? Neurons(int layer, Tensor mlpInput, Func<Tensor> preActivations) => null;
        public Tensor? Heads(int layer, Func<Tensor> headOutputs)
        {
            if (onlyLayer is { } only && layer != only) return null;
            var outputs = headOutputs(); // [B,T,H,D]
            return torch.tensor(heads).expand(outputs.shape[0], outputs.shape[1], heads.Length);
        }
    }

    /// <summary>The gathered columns of the output projection equal the dense maths with the skipped heads' outputs zeroed: a
    /// dense model whose output-projection columns of the skipped heads are zero. GQA selects query heads (two of them share a
    /// KV head here); OPT and the parallel-residual NeoX reach the same seam.</summary>
    [Theory]
    [InlineData("llama-gqa", "self_attn.o_proj.weight", new long[] { 1, 2 })]
    [InlineData("llama-gqa", "self_attn.o_proj.weight", new long[] { 0, 1, 2, 3 })]
    [InlineData("opt-prenorm", "self_attn.out_proj.weight", new long[] { 0, 3 })]
    [InlineData("neox-parallel", "attention.dense.weight", new long[] { 2 })]
    [InlineData("gpt2", "attn.c_proj.weight", new long[] { 1, 3 })]
    public void KeptHeadsGiveTheDenseMathsWithTheSkippedHeadsZeroed(string fixture, string outputProjection, long[] kept)
    {
        using var sparse = Load(fixture);
        sparse.Sparsity = new FixedHeads(kept);
        var selected = Generate(sparse);

        using var zeroed = Load(fixture);
        int heads = zeroed.Info.Heads, d = zeroed.Info.HeadDim;
        using (torch.no_grad())
            for (int l = 0; l < zeroed.Info.Layers; l++)
                foreach (int h in Enumerable.Range(0, heads).Where(h => !kept.Contains(h)))
                    zeroed.Parts[l + 1][outputProjection].narrow(1, h * d, d).zero_();
        var dense = Generate(zeroed);
        Assert.Equal(dense.Sequences.Select(s => s.Tokens), selected.Sequences.Select(s => s.Tokens));
        for (int i = 0; i < dense.Logits!.Count; i++)
            Assert.True(dense.Logits[i].allclose(selected.Logits![i], rtol: 1e-5, atol: 1e-5), $"step {i}");
    }

    /// <summary>
    /// Head-subset attention (the selection known before attention: only the kept heads' query rows and attention, keys and values
    /// of every head) gives what projecting the kept heads of a full attention gives, with padding (two prompts of different
    /// lengths: the masked path); under GQA kept heads 1 and 2 read different KV heads, 0 and 1 the same. Keeping every head
    /// this way is the dense run.
    /// </summary>
    [Theory]
    [InlineData("llama-gqa", new long[] { 1, 2 })]
    [InlineData("llama-gqa", new long[] { 0, 1 })]
    [InlineData("llama-gqa", new long[] { 0, 1, 2, 3 })]
    [InlineData("opt-prenorm", new long[] { 0, 3 })]
    public void HeadSubsetAttentionEqualsProjectingTheKeptHeads(string fixture, long[] kept)
    {
        using var model = Load(fixture);
        GenerationResult Run(IContextualSparsity? sparsity)
        {
            model.Sparsity = sparsity;
            return Generate(model, steps: 6);
        }
        var projected = Run(new FixedHeads(kept));
        var subset = Run(new FixedHeads(kept) { Ahead = true });
        Assert.Equal(projected.Sequences.Select(s => s.Tokens), subset.Sequences.Select(s => s.Tokens));
        for (int i = 0; i < projected.Logits!.Count; i++)
            Assert.True(projected.Logits[i].allclose(subset.Logits![i], rtol: 1e-5, atol: 1e-5), $"step {i}");
        if (kept.Length < model.Info.Heads) return;
        var dense = Run(null);
        for (int i = 0; i < dense.Logits!.Count; i++)
            Assert.True(dense.Logits[i].allclose(subset.Logits![i], rtol: 1e-5, atol: 1e-5), $"every head, step {i}");
    }

    /// <summary>The same in a static-shape step (what a CUDA graph captures: attention over every preallocated slot, masked), on
    /// the composite path the CPU runs.</summary>
    [Theory]
    [InlineData("llama-gqa", new long[] { 0, 3 })]
    [InlineData("opt-prenorm", new long[] { 1 })]
    public void HeadSubsetAttentionOfAStaticShapeStep(string fixture, long[] kept)
    {
        using var model = Load(fixture);
        long[] prompt = { 5, 17, 42, 9, 3 };
        Tensor Decode(IContextualSparsity sparsity)
        {
            model.Sparsity = sparsity;
            using var cache = model.CreateCache(1, 16, maxStepTokens: prompt.Length);
            model.Forward(Step(prompt, 0), cache).Dispose();
            var logits = model.Forward(Step(new long[] { 11 }, prompt.Length).WithWriteSlots(torch.tensor(new long[] { cache.Length })), cache);
            model.Sparsity = null;
            return logits;
        }
        using var projected = Decode(new FixedHeads(kept) { Sparse = b => b.InputIds.shape[1] == 1 });
        using var subset = Decode(new FixedHeads(kept) { Sparse = b => b.InputIds.shape[1] == 1, Ahead = true });
        Assert.True(projected.allclose(subset, rtol: 1e-5, atol: 1e-5));
    }

    /// <summary>k = every head (and every neuron) is the dense run, bit for bit, whatever the rule.</summary>
    [Theory]
    [InlineData("llama-gqa", 1.0)]
    [InlineData("opt-prenorm", 1.0)]
    [InlineData("opt-prenorm", 0.99)] // ⌈0.99 · 4⌉ = 4 heads, ⌈0.99 · 64⌉ = 64 neurons
    public void EveryHeadIsTheDenseRunExactly(string fixture, double fraction)
    {
        using var model = Load(fixture);
        var dense = Generate(model);
        bool relu = ModelIdentity.Of(model.Config).HasReluMlp;
        foreach (var rule in new[] { SelectionRule.Oracle, SelectionRule.Random })
        {
            using var sparsity = DejaVuSparsity.Create(model, new SparsityOptions
            {
                Rule = rule, HeadsActive = fraction, MlpActive = relu ? fraction : 1, EveryToken = true,
            });
            Assert.Equal(model.Info.Heads, sparsity.ActiveHeads);
            model.Sparsity = sparsity;
            var all = Generate(model);
            for (int i = 0; i < dense.Logits!.Count; i++) Assert.True(dense.Logits[i].allclose(all.Logits![i], rtol: 0, atol: 0), $"{rule}, step {i}");
        }
    }

    static ForwardBatch Step(long[] ids, int start) => new()
    {
        InputIds = torch.tensor(ids, new long[] { 1, ids.Length }),
        Positions = torch.arange(start, start + ids.Length, ScalarType.Int64).unsqueeze(0),
        RealTokens = new[] { ids.Length },
        MaxPosition = start + ids.Length - 1,
        LastPositionOnly = true,
    };

    /// <summary>
    /// The keys and values of skipped heads are still written: three decode steps project one head of the last layer (their
    /// logits change) and leave every cache entry — of every layer and head — equal to the dense run's, so the dense step
    /// after them reads no missing entry and gives the dense run's logits. (Sparse heads in earlier layers would change later
    /// layers' inputs, hence their keys, legitimately; the last layer isolates what skipping does to the cache.)
    /// </summary>
    [Theory]
    [InlineData("llama-gqa", false)]
    [InlineData("opt-prenorm", false)]
    [InlineData("llama-gqa", true)] // head-subset attention: the kept heads' queries only, every key and value
    [InlineData("opt-prenorm", true)]
    public void SkippedHeadsStillWriteTheirKeysAndValues(string fixture, bool ahead)
    {
        using var model = Load(fixture);
        long[] prompt = { 5, 17, 42, 9, 3 }, next = { 11, 60, 2, 8 };
        (List<Tensor> Logits, KvCache Cache) Run(IContextualSparsity? sparsity)
        {
            model.Sparsity = sparsity;
            var cache = model.CreateCache(1, 16, maxStepTokens: prompt.Length);
            model.Forward(Step(prompt, 0), cache).Dispose();
            var logits = next.Select((id, i) => model.Forward(Step(new[] { id }, prompt.Length + i), cache)).ToList();
            model.Sparsity = null;
            return (logits, cache);
        }
        var (dense, denseCache) = Run(null);
        int layer = model.Info.Layers - 1, decodes = 0;
        var (sparse, sparseCache) = Run(new FixedHeads(new long[] { 2 }, onlyLayer: layer)
        {
            Sparse = b => b.InputIds.shape[1] == 1 && ++decodes <= 3, // three sparse decode steps, then a dense one
            Ahead = ahead,
        });
        using (denseCache)
        using (sparseCache)
        {
            for (int i = 0; i < 3; i++) Assert.False(dense[i].allclose(sparse[i], rtol: 1e-4, atol: 1e-4), $"sparse step {i} changed nothing");
            for (int l = 0; l < model.Info.Layers; l++)
            {
                Assert.True(denseCache[l].ActiveKeys.allclose(sparseCache[l].ActiveKeys, rtol: 1e-6, atol: 1e-6), $"layer {l} keys");
                Assert.True(denseCache[l].ActiveValues.allclose(sparseCache[l].ActiveValues, rtol: 1e-6, atol: 1e-6), $"layer {l} values");
            }
            Assert.True(dense[3].allclose(sparse[3], rtol: 1e-5, atol: 1e-5), "the dense step after sparse ones reads the dense run's cache");
        }
    }

    /// <summary>At half the heads the oracle (top by ‖o_h‖) stays nearer the dense logits than random heads; head sparsity
    /// serves SwiGLU models, whose MLP sparsity is refused.</summary>
    [Fact]
    public void TheOracleIsNearerTheDenseLogitsThanRandomHeadsOnASwiGluModel()
    {
        using var model = Load("llama-gqa");
        var dense = Generate(model, steps: 1).Logits![0];
        double Distance(SelectionRule rule)
        {
            using var sparsity = DejaVuSparsity.Create(model, new SparsityOptions { Rule = rule, HeadsActive = 0.5, Seed = 5, EveryToken = true });
            model.Sparsity = sparsity;
            using var sparse = Generate(model, steps: 1).Logits![0];
            model.Sparsity = null;
            return (sparse - dense).square().mean().item<float>();
        }
        double oracle = Distance(SelectionRule.Oracle), random = Distance(SelectionRule.Random);
        Assert.True(oracle < random, $"oracle {oracle} vs random {random}");
        var e = Assert.Throws<SparsityException>(() => DejaVuSparsity.Create(model, new SparsityOptions { Rule = SelectionRule.Oracle, HeadsActive = 0.5, MlpActive = 0.5 }));
        Assert.Contains("'silu'", e.Message);
        var bad = Assert.Throws<OptionException>(() => DejaVuSparsity.Create(model, new SparsityOptions { Rule = SelectionRule.Oracle, HeadsActive = 1.5 }));
        Assert.Equal(TernOption.SparsityHeads, bad.Option);
    }

    /// <summary>Trained head predictors select with lookahead (heads-only predictors of a SwiGLU model), MLP and heads together
    /// on a ReLU model; heads-only predictors refuse MLP sparsity by name.</summary>
    [Fact]
    public void TrainedHeadPredictorsSelectTheHeadsOfDecodeSteps()
    {
        var random = new Random(1);
        using (var swiglu = Load("llama-gqa"))
        {
            var tokens = Enumerable.Range(0, 1024).Select(_ => random.Next(swiglu.Info.VocabSize)).ToArray();
            using var data = ActivationCollector.Collect(swiglu, tokens, new CollectOptions { MaxTokens = 512, SequenceLength = 64, Mlp = false }, cancellation: Ct);
            using var predictors = PredictorTrainer.Train(data, new PredictorTrainingOptions { Epochs = 2, Mlp = false }, cancellation: Ct);
            using var sparsity = DejaVuSparsity.Create(swiglu, new SparsityOptions { HeadsActive = 0.5 }, predictors);
            Assert.Equal(2, sparsity.ActiveHeads);
            swiglu.Sparsity = sparsity;
            var sparse = Generate(swiglu);
            swiglu.Sparsity = null;
            var dense = Generate(swiglu);
            Assert.True(dense.Logits![0].allclose(sparse.Logits![0], rtol: 0, atol: 0), "the prefill runs dense");
            Assert.False(dense.Logits[1].allclose(sparse.Logits![1], rtol: 1e-4, atol: 1e-4), "half the heads is not the dense step");
            var e = Assert.Throws<OptionException>(() => DejaVuSparsity.Create(swiglu, new SparsityOptions { HeadsActive = 0.5 }, null));
            Assert.Contains("tern sparsity train", e.Message);
        }
        using var relu = Load("llama-linear-relu-f16");
        var corpus = Enumerable.Range(0, 1024).Select(_ => random.Next(relu.Info.VocabSize)).ToArray();
        using var all = ActivationCollector.Collect(relu, corpus, new CollectOptions { MaxTokens = 512, SequenceLength = 64 }, cancellation: Ct);
        using var both = PredictorTrainer.Train(all, new PredictorTrainingOptions { Epochs = 2 }, cancellation: Ct);
        using var combined = DejaVuSparsity.Create(relu, new SparsityOptions { HeadsActive = 0.5, MlpActive = 0.25 }, both);
        relu.Sparsity = combined;
        Assert.All(Generate(relu, steps: 6).Sequences, s => Assert.Equal(6, s.Tokens.Count));
        using var headsOnly = PredictorTrainer.Train(all, new PredictorTrainingOptions { Epochs = 1, Mlp = false }, cancellation: Ct);
        var refused = Assert.Throws<OptionException>(() => DejaVuSparsity.Create(relu, new SparsityOptions { HeadsActive = 0.5, MlpActive = 0.25 }, headsOnly));
        Assert.Contains("--heads-only", refused.Message);
    }
}
