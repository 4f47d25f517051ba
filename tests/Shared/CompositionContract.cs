using Tern.Caching;
using Tern.Generation;
using Tern.Models;
using Tern.Offloading;
using Tern.Runtime;
using Tern.Serving;
using Generator = Tern.Generation.Generator;

namespace Tern.Tests;

/// <summary>
/// Issue 12's compositions on one device (the CPU subclass runs in CI, the CUDA one on the GPU machine): static-shape decode
/// steps — CUDA graphs on a GPU, the same bodies without a graph on the CPU — for every 16-bit policy, evicting ones included;
/// serving pools of every policy side by side, with static shapes; and an offloaded model served in blocks. Each gives the
/// greedy tokens of the plain, eager <see cref="Generator"/> run alone.
/// </summary>
public abstract class CompositionContract
{
    /// <summary>The compute device.</summary>
    protected abstract DeviceKind Device { get; }

    /// <summary>True where static-shape steps are captured as CUDA graphs; else they run as they are (forced).</summary>
    protected abstract bool Graphs { get; }

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    ModelLoadOptions Load => new() { Device = Device };

    static IReadOnlyList<int>[] Prompts(int vocab)
    {
        var rng = new Random(11);
        return new[] { 6, 2, 9, 4 }.Select(n => (IReadOnlyList<int>)Enumerable.Range(0, n).Select(_ => rng.Next(3, vocab)).ToArray()).ToArray();
    }

    static KvCacheConfig Policy(string name, string? budget = null, int? sinks = null, int evictEvery = 1, int bits = 16) =>
        KvCachePolicies.Create(new KvPolicyOptions { Policy = name, Budget = budget is null ? null : KvBudget.Parse(budget), Sinks = sinks, EvictEvery = evictEvery, Bits = bits });

    public static TheoryData<string, string?, int?, int> Policies => new()
    {
        { "full", null, null, 1 }, { "sink", "10", 2, 1 }, { "sink", "10", 2, 6 }, { "window", "9", null, 3 }, { "h2o", "10", null, 1 }, { "h2o", "0.4", null, 4 },
    };

    GenerationOptions Greedy(int maxNew, KvCacheConfig? policy = null) =>
        new() { MaxNewTokens = maxNew, IgnoreEos = true, Cache = policy, UseCudaGraphs = false };

    GenerationOptions StaticShapes(GenerationOptions eager) => Graphs ? eager with { UseCudaGraphs = true } : eager with { ForceStaticShapes = true };

    [Theory]
    [MemberData(nameof(Policies))]
    public void StaticShapeStepsGiveTheEagerTokensForEveryPolicy(string name, string? budget, int? sinks, int evictEvery)
    {
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir("llama-gqa"), Load);
        var prompts = Prompts(model.Info.VocabSize);
        var eager = Greedy(40, Policy(name, budget, sinks, evictEvery));
        var expected = new Generator(model).GenerateTokens(prompts, eager, Ct);
        var captured = new Generator(model).GenerateTokens(prompts, StaticShapes(eager), Ct);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected.Sequences[i].Tokens, captured.Sequences[i].Tokens);
    }

    /// <param name="together">Pools of different policies step in one static-shape forward pass (one CUDA graph over their
    /// caches on CUDA), else each its own; h2o's steady state (eviction in place) is part of the graph.</param>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ServingPoolsOfEveryPolicyStepSideBySideWithStaticShapesOrTogether(bool together)
    {
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir("llama-gqa"), Load);
        var prompts = Prompts(model.Info.VocabSize);
        var cases = new[]
        {
            (0, Greedy(30)), (1, Greedy(24)), (2, Greedy(30, Policy("sink", "10", 2))), (3, Greedy(30, Policy("sink", "10", 2))),
            (0, Greedy(30, Policy("h2o", "12", evictEvery: 3))), (3, Greedy(30, Policy("h2o", "10"))), (2, Greedy(26, Policy("window", "8"))),
            (1, Greedy(20, Policy("full", bits: 8))),
        };
        var expected = cases.Select(c => new Generator(model).GenerateTokens(new[] { prompts[c.Item1] }, c.Item2, Ct).Sequences[0].Tokens).ToArray();
        using var engine = ServingEngine.Start(model, null, new ServingOptions { MaxBatchSize = 8, UseCudaGraphs = Graphs, ForceStaticShapes = !Graphs, StepPoolsTogether = together });
        var requests = cases.Select(c => engine.Submit(prompts[c.Item1], c.Item2, Ct)).ToArray();
        for (int i = 0; i < cases.Length; i++) Assert.Equal(expected[i], (await requests[i].Completion).Tokens);
    }

    [Fact]
    public async Task AnOffloadedModelServesInBlocksWithPoliciesOnEitherTier()
    {
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir("llama-gqa"), Load);
        var prompts = Prompts(model.Info.VocabSize);
        var h2o = Policy("h2o", "8");
        var cases = new[] { (0, Greedy(20)), (1, Greedy(12)), (2, Greedy(16, h2o)), (3, Greedy(16, h2o)) };
        var expected = cases.Select(c => new Generator(model).GenerateTokens(new[] { prompts[c.Item1] }, c.Item2, Ct).Sequences[0].Tokens).ToArray();
        foreach (string cache in new[] { "100/0/0", "0/100/0" })
        {
            using var offloaded = OffloadedModel.Load(Fixtures.ModelDir("llama-gqa"), Load,
                new OffloadOptions { Policy = OffloadPolicy.Parse($"w=0/100/0,kv={cache},act=0/100/0,gbs=2,ngb=2") });
            using var engine = ServingEngine.Start(offloaded, null, new ServingOptions { MaxBatchSize = 4 });
            var requests = cases.Select(c => engine.Submit(prompts[c.Item1], c.Item2, Ct)).ToArray();
            for (int i = 0; i < cases.Length; i++) Assert.Equal(expected[i], (await requests[i].Completion).Tokens);
        }
    }
}
