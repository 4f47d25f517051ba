using Tern.Caching;
using Tern.Generation;
using Tern.Models;
using Tern.Runtime;

namespace Tern.Tests.Caching;

/// <summary>Policies by name, budgets as counts or ratios, and the rejections of impossible settings (errors name the option).</summary>
public sealed class KvPolicyOptionsTests
{
    /// <summary>Each name gives its eviction and the cache options it runs with; window-recompute runs over the full cache
    /// and re-runs its window (a way of stepping, not an eviction).</summary>
    [Theory]
    [InlineData("full", null, typeof(DensePolicy), "full", false)]
    [InlineData("window", "16", typeof(StreamingPolicy), "window", true)]
    [InlineData("window-recompute", "16", typeof(DensePolicy), "full", false)]
    [InlineData("sink", "16", typeof(StreamingPolicy), "sink", true)]
    [InlineData("h2o", "0.2", typeof(HeavyHitterPolicy), "h2o", false)]
    public void CreatesEachPolicyByName(string name, string? budget, Type type, string eviction, bool rollsPositions)
    {
        foreach (int bits in new[] { 16, 8, 4 })
        {
            var options = new KvPolicyOptions { Policy = name, Budget = budget is null ? null : KvBudget.Parse(budget), Bits = bits };
            var cache = KvCachePolicies.Create(options);
            Assert.IsType(type, cache.Eviction);
            Assert.Equal(eviction, cache.Eviction.Name);
            Assert.Equal(bits, cache.Bits);
            Assert.Equal(rollsPositions, cache.RollPositions);
            Assert.Equal(name == "window-recompute" ? options.Budget : null, options.RecomputeWindow);
        }
        Assert.Equal(KvCacheConfig.Full, KvCachePolicies.Create(new KvPolicyOptions()));
        Assert.Same(DensePolicy.Instance, KvCachePolicies.Create(new KvPolicyOptions()).Eviction);
        Assert.Equal(KvCachePolicies.Names.Count, KvCachePolicies.Names.Distinct().Count());
    }

    /// <summary>Serving pools are keyed by the configuration: equal settings compare equal, any difference does not.</summary>
    [Fact]
    public void ConfigurationsCompareByValue()
    {
        KvCacheConfig Sink(int bits = 16) => KvCachePolicies.Create(new KvPolicyOptions { Policy = "sink", Budget = KvBudget.Parse("0.5"), Bits = bits });
        Assert.Equal(Sink(), Sink());
        Assert.Equal(Sink().GetHashCode(), Sink().GetHashCode());
        Assert.NotEqual(Sink(), Sink(8));
        Assert.NotEqual(Sink(), Sink() with { RollPositions = false });
        Assert.Equal(Sink().ForSequenceLength(40), Sink(16).ForSequenceLength(40));
        Assert.NotEqual(Sink().ForSequenceLength(40), Sink().ForSequenceLength(36));
        Assert.Equal(16, Sink().ForSequenceLength(36).Bits);
        Assert.Throws<OptionException>(() => KvCacheConfig.Full with { Bits = 3 });
    }

    [Fact]
    public void BudgetsAreTokenCountsOrRatiosOfTheSequence()
    {
        var tokens = KvBudget.Parse("512");
        Assert.False(tokens.IsRatio);
        Assert.Equal(512, tokens.Resolve(100_000));
        var ratio = KvBudget.Parse("0.2");
        Assert.True(ratio.IsRatio);
        Assert.Equal(20, ratio.Resolve(100));
        Assert.Equal(20, ratio.Resolve(104)); // ⌊0.2 · 104⌋, as H2O's int(ratio · T)
        Assert.Equal(100, KvBudget.Parse("1.0").Resolve(100));
        Assert.Equal("0.2", ratio.ToString());
        Assert.Equal("512", tokens.ToString());
    }

    [Theory]
    [InlineData("0", "KvPolicyOptions.Budget must be at least 1 token")]
    [InlineData("-3", "KvPolicyOptions.Budget must be at least 1 token")]
    [InlineData("1.5", "KvPolicyOptions.Budget as a ratio must be in (0, 1]")]
    [InlineData("0.0", "KvPolicyOptions.Budget as a ratio must be in (0, 1]")]
    [InlineData("lots", "KvPolicyOptions.Budget must be a token count such as 512 or a ratio such as 0.2")]
    public void RejectsBudgetsThatAreNoCountOrRatio(string text, string message)
    {
        var e = Assert.Throws<OptionException>(() => KvBudget.Parse(text));
        Assert.Equal(TernOption.KvBudget, e.Option);
        Assert.StartsWith(message, e.Message);
    }

    public static TheoryData<KvPolicyOptions, string> Impossible => new()
    {
        { new KvPolicyOptions { Policy = "lru" }, "KvPolicyOptions.Policy must be one of full, window, window-recompute, sink, h2o" },
        { new KvPolicyOptions { Bits = 3 }, "KvPolicyOptions.Bits must be 16, 8 or 4 (got 3)" },
        { new KvPolicyOptions { Policy = "sink" }, "KvPolicyOptions.Policy sink needs KvPolicyOptions.Budget" },
        { new KvPolicyOptions { Budget = KvBudget.OfTokens(8) }, "KvPolicyOptions.Budget does not apply to KvPolicyOptions.Policy full" },
        { new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(4) }, "KvPolicyOptions.Sinks 4 must be smaller than KvPolicyOptions.Budget 4" },
        { new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(8), Sinks = 9 }, "KvPolicyOptions.Sinks 9 must be smaller than KvPolicyOptions.Budget 8" },
        { new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(8), Sinks = -1 }, "KvPolicyOptions.Sinks must be >= 0" },
        { new KvPolicyOptions { Policy = "window", Budget = KvBudget.OfTokens(8), Sinks = 2 }, "KvPolicyOptions.Sinks applies to KvPolicyOptions.Policy sink only" },
        { new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(8), Recent = KvBudget.OfTokens(2) }, "KvPolicyOptions.Recent applies to KvPolicyOptions.Policy h2o only" },
        { new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.OfTokens(8), Recent = KvBudget.OfTokens(9) }, "KvPolicyOptions.Recent 9 must not exceed KvPolicyOptions.Budget 8" },
        { new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.OfRatio(0.1), Recent = KvBudget.OfRatio(0.2) }, "KvPolicyOptions.Recent 0.2 must not exceed KvPolicyOptions.Budget 0.1" },
        { new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(8), NormalizeScores = true }, "score normalisation applies to KvPolicyOptions.Policy h2o only" },
    };

    [Theory]
    [MemberData(nameof(Impossible))]
    public void RejectsImpossibleSettingsNamingTheOption(KvPolicyOptions options, string message)
    {
        var e = Assert.Throws<OptionException>(() => KvCachePolicies.Create(options));
        Assert.StartsWith(message, e.Message);
    }

    /// <summary>Ratios resolve when the cache is created: one leaving no room for a step is refused before anything runs.</summary>
    [Theory]
    [InlineData("sink", "0.05", "KvPolicyOptions.Budget 0.05 gives 2 entries for a 40-token sequence; KvPolicyOptions.Policy sink with 4 sinks needs at least 5")]
    [InlineData("window", "0.01", "KvPolicyOptions.Budget 0.01 gives 0 entries for a 40-token sequence; KvPolicyOptions.Policy window with 0 sinks needs at least 1")]
    [InlineData("h2o", "0.02", "KvPolicyOptions.Budget 0.02 gives 0 entries for a 40-token sequence; KvPolicyOptions.Policy h2o needs at least 1")]
    public void RejectsRatiosThatLeaveNoRoomForAStep(string name, string budget, string message)
    {
        using var model = HfParityContract.LoadFixture("llama-gqa");
        var policy = KvCachePolicies.Create(new KvPolicyOptions { Policy = name, Budget = KvBudget.Parse(budget) });
        var e = Assert.Throws<OptionException>(() => model.CreateCache(1, 40, policy, 8));
        Assert.Equal(new[] { TernOption.KvBudget, TernOption.KvPolicy }, e.Options);
        Assert.Equal(message + ".", e.Message);
    }

    /// <summary>A re-computation window given as a ratio resolves when the generation starts: one leaving no token is refused
    /// before anything runs.</summary>
    [Fact]
    public void RejectsARecomputeWindowRatioThatLeavesNoToken()
    {
        using var model = HfParityContract.LoadFixture("llama-gqa");
        var options = new GenerationOptions { MaxNewTokens = 35, IgnoreEos = true }
            .WithKvPolicy(new KvPolicyOptions { Policy = "window-recompute", Budget = KvBudget.Parse("0.02") });
        var e = Assert.Throws<OptionException>(() => new Generator(model).GenerateTokens(new IReadOnlyList<int>[] { new[] { 5, 9, 17, 33, 4 } }, options, TestContext.Current.CancellationToken));
        Assert.Equal(new[] { TernOption.KvBudget, TernOption.KvPolicy }, e.Options);
        Assert.Equal("KvPolicyOptions.Budget 0.02 gives 0 entries for a 40-token sequence; KvPolicyOptions.Policy window-recompute needs at least 1.", e.Message);
    }

    [Fact]
    public void RejectsAnH2oRecentRatioLargerThanATokenBudget()
    {
        var policy = KvCachePolicies.Create(new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.OfTokens(8), Recent = KvBudget.OfRatio(0.5) }).Eviction;
        var e = Assert.Throws<OptionException>(() => policy.Capacity(40, 1));
        Assert.Equal(TernOption.KvRecent, e.Option);
        Assert.StartsWith("KvPolicyOptions.Recent 0.5 gives 20 entries, more than the 8 of KvPolicyOptions.Budget 8", e.Message);
        Assert.Equal((8, 4), ((HeavyHitterPolicy)KvCachePolicies.Create(new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.OfTokens(8) }).Eviction).Sizes(40));
    }

    /// <summary>Learned position tables (OPT, GPT-2) must hold every cache index: a budget past them is refused.</summary>
    [Theory]
    [InlineData("opt-prenorm")]
    [InlineData("gpt2")]
    public void RejectsCacheIndexesPastLearnedPositions(string name)
    {
        using var model = HfParityContract.LoadFixture(name);
        var policy = KvCachePolicies.Create(new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(60) });
        var e = Assert.Throws<OptionException>(() => model.CreateCache(1, 500, policy, 8));
        Assert.Equal(new[] { TernOption.KvPolicy, TernOption.KvBudget }, e.Options);
        Assert.Contains("reaches 67", e.Message);
        Assert.Contains("has 64 learned positions", e.Message);
        using var fits = model.CreateCache(1, 500, policy, 4); // 60 + 4 slots: indexes up to 63
        Assert.Equal(64, fits[0].Capacity);
    }
}
