using Tern.Generation;
using Tern.Caching;
using Tern.Models;

namespace Tern.Tests.Generation;

/// <summary>Policies through the generator: sink past the trained context, the re-computation seam, which requests CUDA
/// graphs serve.</summary>
public sealed class GeneratorPolicyTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static readonly IReadOnlyList<int>[] Prompt = { new[] { 5, 9, 17, 33, 4 } };

    static GenerationOptions Greedy(int tokens, KvCacheConfig? cache = null) =>
        new() { MaxNewTokens = tokens, IgnoreEos = true, Cache = cache };

    static KvCacheConfig Sink(int budget) => KvCachePolicies.Create(new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(budget) });

    /// <summary>Every fixture has 64 positions; under sink the generator goes on to 300 new tokens, and until the cache first
    /// evicts its tokens are those of the full cache.</summary>
    [Theory]
    [InlineData("llama-gqa")]
    [InlineData("neox-parallel")]
    [InlineData("opt-prenorm")]
    [InlineData("gpt2")]
    public void SinkGeneratesFarPastTheTrainedContext(string name)
    {
        const int budget = 16;
        using var model = HfParityContract.LoadFixture(name);
        var generator = new Generator(model);
        var full = generator.GenerateTokens(Prompt, Greedy(300), Ct).Sequences[0].Tokens;
        Assert.Equal(model.Info.MaxPositions - Prompt[0].Count, full.Count); // the full cache stops at the context
        var sink = generator.GenerateTokens(Prompt, Greedy(300, Sink(budget)), Ct).Sequences[0].Tokens;
        Assert.Equal(300, sink.Count);
        int beforeEviction = budget - Prompt[0].Count + 1; // the token sampled after the cache first holds the budget
        Assert.Equal(full.Take(beforeEviction), sink.Take(beforeEviction));
    }

    /// <summary>Window with re-computation: each token is the arg-max of one fresh forward pass over the last W tokens of the
    /// sequence so far (positions from 0), the baseline's definition, checked against full passes with the dense cache.</summary>
    [Fact]
    public void WindowRecomputePredictsEachTokenFromAFreshPassOverTheWindow()
    {
        const int window = 8, tokens = 30;
        using var model = HfParityContract.LoadFixture("llama-gqa");
        var generator = new Generator(model);
        var recompute = Greedy(tokens).WithKvPolicy(new KvPolicyOptions { Policy = "window-recompute", Budget = KvBudget.OfTokens(window) });
        var prompts = new IReadOnlyList<int>[] { new[] { 5, 9, 17, 33, 4, 8, 100, 71, 3, 12 }, new[] { 7, 19 } };
        var result = generator.GenerateTokens(prompts, recompute, Ct);
        var full = generator.GenerateTokens(prompts, Greedy(tokens), Ct);
        for (int b = 0; b < prompts.Length; b++)
        {
            var sequence = prompts[b].Select(x => (long)x).ToList();
            var generated = result.Sequences[b].Tokens;
            Assert.Equal(tokens, generated.Count);
            foreach (int token in generated)
            {
                var context = sequence.Skip(Math.Max(0, sequence.Count - window)).ToArray();
                using var logits = HfParityContract.FullLogits(model, new[] { context });
                Assert.Equal(PolicyRun.Argmax(logits.select(1, context.Length - 1))[0], token);
                sequence.Add(token);
            }
        }
        // The short prompt fits the window for its first tokens: there the baseline is the full cache.
        Assert.Equal(full.Sequences[1].Tokens.Take(window - 1), result.Sequences[1].Tokens.Take(window - 1));
        Assert.NotEqual(full.Sequences[0].Tokens, result.Sequences[0].Tokens);
    }

    /// <summary>CUDA graphs (static shapes) serve every 16-bit cache, evicting ones included; quantized caches and the
    /// window re-computation run eagerly.</summary>
    [Fact]
    public void StaticShapeStepsServeEverySixteenBitCacheButRecomputation()
    {
        using var model = HfParityContract.LoadFixture("llama-gqa");
        var forced = new GenerationOptions { ForceStaticShapes = true };
        bool CanServe(GenerationOptions options)
        {
            using var runner = model.CreateRunner(1, 32, 1, options.Cache);
            return CudaGraphDecoder.CanServe(runner, model.Device, options);
        }
        Assert.True(CanServe(forced));
        Assert.True(CanServe(forced with { Cache = KvCacheConfig.Full }));
        Assert.False(CanServe(forced with { Cache = new KvCacheConfig(bits: 8) }));
        Assert.True(CanServe(forced with { Cache = Sink(16) }));
        Assert.False(CanServe(forced.WithKvPolicy(new KvPolicyOptions { Policy = "window-recompute", Budget = KvBudget.OfTokens(8) })));
    }

    /// <summary>Quantized and evicting policies run through the generator like the full cache: same prompt, tokens produced,
    /// and a quantized full cache of 8 bits follows the 16-bit tokens on this short run.</summary>
    [Fact]
    public void QuantizedCachesGenerate()
    {
        using var model = HfParityContract.LoadFixture("llama-gqa");
        var generator = new Generator(model);
        var full = generator.GenerateTokens(Prompt, Greedy(20), Ct).Sequences[0].Tokens;
        var eight = generator.GenerateTokens(Prompt, Greedy(20, new KvCacheConfig(bits: 8)), Ct).Sequences[0].Tokens;
        Assert.Equal(full, eight);
        foreach (string name in new[] { "sink", "h2o" })
        {
            var policy = KvCachePolicies.Create(new KvPolicyOptions { Policy = name, Budget = KvBudget.OfRatio(0.5), Bits = 4 });
            Assert.Equal(20, generator.GenerateTokens(Prompt, Greedy(20, policy), Ct).Sequences[0].Tokens.Count);
        }
    }

    /// <summary>A prompt run in chunks gives the full cache's tokens, for a left-padded batch too (the first chunk widens to
    /// hold a real token of every row).</summary>
    [Theory]
    [InlineData("llama-gqa", 4)]
    [InlineData("llama-gqa", 1)]
    [InlineData("opt-prenorm", 5)]
    [InlineData("neox-parallel", 3)]
    public void ChunkedPrefillGivesTheTokensOfOneStep(string name, int chunk)
    {
        using var model = HfParityContract.LoadFixture(name);
        var prompts = KvCachePolicyContract.Prompts(model.Info.VocabSize).Select(p => (IReadOnlyList<int>)p.Select(x => (int)x).ToArray()).ToArray();
        var generator = new Tern.Generation.Generator(model);
        var whole = generator.GenerateTokens(prompts, Greedy(12), Ct).Sequences;
        var chunked = generator.GenerateTokens(prompts, Greedy(12) with { PrefillChunk = chunk }, Ct).Sequences;
        for (int b = 0; b < prompts.Length; b++) Assert.Equal(whole[b].Tokens, chunked[b].Tokens);
    }

    [Fact]
    public void ChunksCoverThePromptOnceAndTheFirstHoldsARealTokenOfEveryRow()
    {
        var prompts = new IReadOnlyList<int>[] { new[] { 1, 2, 3, 4, 5, 6, 7, 8, 9 }, new[] { 1, 2 } };
        var batch = ForwardBatch.LeftPadded(prompts, TorchSharp.torch.CPU, lastPositionOnly: true);
        var chunks = batch.Chunks(3).ToArray();
        Assert.Equal(new long[] { 8, 1 }, chunks.Select(c => c.InputIds.shape[1])); // 7 padding columns: the first chunk takes 8
        Assert.Equal(new[] { 8, 1 }, chunks[0].RealTokens);
        Assert.Equal(new[] { 1, 1 }, chunks[1].RealTokens);
        Assert.True(chunks[0].HasPadding);
        Assert.False(chunks[1].HasPadding);
        Assert.Equal(new[] { 7, 8 }, chunks.Select(c => c.MaxPosition));
        var even = ForwardBatch.LeftPadded(new IReadOnlyList<int>[] { Enumerable.Range(1, 10).ToArray() }, TorchSharp.torch.CPU).Chunks(4).ToArray();
        Assert.Equal(new long[] { 4, 4, 2 }, even.Select(c => c.InputIds.shape[1]));
        Assert.Equal(new[] { 4, 4, 2 }, even.Select(c => c.RealTokens[0]));
    }
}
