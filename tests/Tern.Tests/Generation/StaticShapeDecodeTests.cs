using Tern.Generation;
using Tern.Models;
using Tern.Runtime;

namespace Tern.Tests.Generation;

/// <summary>The static-shape decode step (what a CUDA graph captures: writes at a device-held slot, attention over the whole
/// cache with a mask) gives the same greedy tokens as the eager step, padded batches and sliding windows included, and so
/// do evicting policies (their eviction steps run eagerly between the static ones).</summary>
public sealed class StaticShapeDecodeTests
{
    [Theory]
    [InlineData("llama-gqa")]
    [InlineData("mistral-window")]
    [InlineData("opt-postnorm-proj")]
    [InlineData("neox-parallel")]
    [InlineData("gpt2")]
    public void StaticShapeStepsMatchEagerSteps(string name)
    {
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(name), new ModelLoadOptions { Device = DeviceKind.Cpu });
        var generator = new Tern.Generation.Generator(model);
        var prompts = new IReadOnlyList<int>[] { new[] { 5, 9, 17, 33, 4 }, new[] { 7 }, new[] { 11, 12, 13, 14, 15, 16, 17, 18, 19 } };
        var options = new GenerationOptions { MaxNewTokens = 40, IgnoreEos = true, RepetitionPenalty = 1.3 };
        var eager = generator.GenerateTokens(prompts, options, TestContext.Current.CancellationToken);
        var staticShapes = generator.GenerateTokens(prompts, options with { ForceStaticShapes = true }, TestContext.Current.CancellationToken);
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(eager.Sequences[i].Tokens, staticShapes.Sequences[i].Tokens);
        // What the run reports of its steps: none static in the eager run; on the CPU nothing is captured, every step eager.
        Assert.Null(eager.Stats.Graphs);
        Assert.Equal(new GraphSteps(Captures: 0, Replays: 0, EagerSteps: staticShapes.Stats.DecodeSteps), staticShapes.Stats.Graphs);
    }

    [Theory]
    [InlineData("llama-gqa", "sink", "12", 1)]
    [InlineData("llama-gqa", "sink", "12", 4)]
    [InlineData("gpt2", "sink", "10", 3)]
    [InlineData("neox-parallel", "window", "9", 2)]
    [InlineData("llama-gqa", "h2o", "10", 1)]
    [InlineData("opt-prenorm", "h2o", "0.4", 5)]
    public void EvictingPoliciesStaticShapeStepsMatchEagerSteps(string name, string policyName, string budget, int evictEvery)
    {
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(name), new ModelLoadOptions { Device = DeviceKind.Cpu });
        var generator = new Tern.Generation.Generator(model);
        var prompts = new IReadOnlyList<int>[] { new[] { 5, 9, 17, 33, 4 }, new[] { 7 }, new[] { 11, 12, 13, 14, 15, 16, 17, 18, 19 } };
        var policy = Tern.Caching.KvCachePolicies.Create(new Tern.Caching.KvPolicyOptions
        {
            Policy = policyName, Budget = Tern.Caching.KvBudget.Parse(budget), Sinks = policyName == "sink" ? 2 : null, EvictEvery = evictEvery,
        });
        var options = new GenerationOptions { MaxNewTokens = 40, IgnoreEos = true, Cache = policy };
        var eager = generator.GenerateTokens(prompts, options, TestContext.Current.CancellationToken);
        var staticShapes = generator.GenerateTokens(prompts, options with { ForceStaticShapes = true }, TestContext.Current.CancellationToken);
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(eager.Sequences[i].Tokens, staticShapes.Sequences[i].Tokens);
    }
}
