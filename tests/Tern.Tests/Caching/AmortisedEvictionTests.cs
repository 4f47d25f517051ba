using Tern.Caching;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Caching;

/// <summary>Sink with eviction every 5 tokens: the contract still holds.</summary>
public sealed class AmortisedSinkPolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) =>
        new(new StreamingPolicy(KvBudget.OfTokens(sequenceLength), sinks: 4, evictEvery: 5), rollPositions: true);
}

/// <summary>H2O with eviction every 5 tokens: the contract still holds.</summary>
public sealed class AmortisedHeavyHitterPolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) => new(new HeavyHitterPolicy(KvBudget.OfTokens(sequenceLength), evictEvery: 5));
    protected override double Tolerance => 1e-5;
}

public sealed class AmortisedEvictionTests
{
    /// <summary>One token per step through a cache under <paramref name="policy"/> (positions rolled, as sink runs): after each
    /// step, the original positions layer 0 holds (sequence 0, KV head 0).</summary>
    static List<long[]> Run(CausalLanguageModel model, IKvCachePolicy policy, int[] tokens)
    {
        using var cache = model.CreateCache(1, tokens.Length, new KvCacheConfig(policy, rollPositions: true));
        var kept = new List<long[]>();
        for (int t = 0; t < tokens.Length; t++)
        {
            using var scope = torch.NewDisposeScope();
            model.Forward(new ForwardBatch
            {
                InputIds = torch.tensor(new long[] { tokens[t] }).view(1, 1),
                Positions = torch.tensor(new long[] { t }).view(1, 1),
                RealTokens = new[] { 1 },
                MaxPosition = t,
                LastPositionOnly = true,
            }, cache);
            kept.Add(cache[0].ActivePositions[0, 0].data<long>().ToArray());
        }
        return kept;
    }

    [Fact]
    public void SinkEvictingEveryEightTokensOverrunsByLessThanEightAndKeepsTheStepRulesTokensAfterEachEviction()
    {
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir("llama-gqa"), new ModelLoadOptions { Device = DeviceKind.Cpu });
        var random = new Random(5);
        int[] tokens = Enumerable.Range(0, 60).Select(_ => random.Next(4, model.Info.VocabSize)).ToArray();
        var stepRule = Run(model, new StreamingPolicy(KvBudget.OfTokens(16), sinks: 4), tokens);
        var amortised = Run(model, new StreamingPolicy(KvBudget.OfTokens(16), sinks: 4, evictEvery: 8), tokens);
        Assert.All(stepRule.Skip(16), k => Assert.Equal(16, k.Length));
        Assert.All(amortised, k => Assert.InRange(k.Length, 1, 16 + 7));
        int evictions = 0;
        for (int t = 1; t < tokens.Length; t++)
        {
            if (amortised[t].Length >= amortised[t - 1].Length) continue;
            evictions++;
            // Right after an eviction both hold the same tokens: the sinks and the 12 most recent. (Their deeper-layer keys
            // differ: the overrun tokens saw a longer context when they were computed.)
            Assert.Equal(stepRule[t], amortised[t]);
        }
        Assert.True(evictions >= 5, $"{evictions} evictions");
    }

    [Fact]
    public void AnEvictionIntervalBelowOneOrForAnotherPolicyIsRefused()
    {
        Assert.Contains("KvPolicyOptions.EvictEvery must be at least 1", Assert.Throws<OptionException>(() =>
            KvCachePolicies.Create(new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(16), EvictEvery = 0 })).Message);
        Assert.Contains("applies to KvPolicyOptions.Policy sink, window and h2o", Assert.Throws<OptionException>(() =>
            KvCachePolicies.Create(new KvPolicyOptions { Policy = "window-recompute", Budget = KvBudget.OfTokens(16), EvictEvery = 4 })).Message);
    }
}
