using Tern.Caching;
using Tern.Models;

namespace Tern.Tests.Caching;

/// <summary>Policies by name, budgets as counts or ratios, and the rejections of impossible settings (messages name the flag).</summary>
public sealed class KvPolicyOptionsTests
{
    [Theory]
    [InlineData("full", null, typeof(DensePolicy))]
    [InlineData("window", "16", typeof(StreamingPolicy))]
    [InlineData("window-recompute", "16", typeof(WindowRecomputePolicy))]
    [InlineData("sink", "16", typeof(StreamingPolicy))]
    [InlineData("h2o", "0.2", typeof(HeavyHitterPolicy))]
    public void CreatesEachPolicyByName(string name, string? budget, Type type)
    {
        foreach (int bits in new[] { 16, 8, 4 })
        {
            var policy = KvCachePolicies.Create(new KvPolicyOptions { Policy = name, Budget = budget is null ? null : KvBudget.Parse(budget), Bits = bits });
            Assert.IsType(type, policy);
            Assert.Equal(name, policy.Name);
            Assert.Equal(bits, policy.Bits);
        }
        Assert.Same(DensePolicy.Instance, KvCachePolicies.Create(new KvPolicyOptions()));
        Assert.Equal(KvCachePolicies.Names.Count, KvCachePolicies.Names.Distinct().Count());
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
    [InlineData("0", "--kv-budget must be at least 1 token")]
    [InlineData("-3", "--kv-budget must be at least 1 token")]
    [InlineData("1.5", "--kv-budget as a ratio must be in (0, 1]")]
    [InlineData("0.0", "--kv-budget as a ratio must be in (0, 1]")]
    [InlineData("lots", "--kv-budget must be a token count such as 512 or a ratio such as 0.2")]
    public void RejectsBudgetsThatAreNoCountOrRatio(string text, string message)
    {
        var e = Assert.Throws<ArgumentException>(() => KvBudget.Parse(text));
        Assert.StartsWith(message, e.Message);
    }

    public static TheoryData<KvPolicyOptions, string> Impossible => new()
    {
        { new KvPolicyOptions { Policy = "lru" }, "--kv-policy must be one of full, window, window-recompute, sink, h2o" },
        { new KvPolicyOptions { Bits = 3 }, "--kv-bits must be 16, 8 or 4 (got 3)" },
        { new KvPolicyOptions { Policy = "sink" }, "--kv-policy sink needs --kv-budget" },
        { new KvPolicyOptions { Budget = KvBudget.OfTokens(8) }, "--kv-budget does not apply to --kv-policy full" },
        { new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(4) }, "--kv-sink 4 must be smaller than --kv-budget 4" },
        { new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(8), Sinks = 9 }, "--kv-sink 9 must be smaller than --kv-budget 8" },
        { new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(8), Sinks = -1 }, "--kv-sink must be >= 0" },
        { new KvPolicyOptions { Policy = "window", Budget = KvBudget.OfTokens(8), Sinks = 2 }, "--kv-sink applies to --kv-policy sink only" },
        { new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(8), Recent = KvBudget.OfTokens(2) }, "--kv-recent applies to --kv-policy h2o only" },
        { new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.OfTokens(8), Recent = KvBudget.OfTokens(9) }, "--kv-recent 9 must not exceed --kv-budget 8" },
        { new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.OfRatio(0.1), Recent = KvBudget.OfRatio(0.2) }, "--kv-recent 0.2 must not exceed --kv-budget 0.1" },
        { new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(8), NormalizeScores = true }, "score normalisation applies to --kv-policy h2o only" },
    };

    [Theory]
    [MemberData(nameof(Impossible))]
    public void RejectsImpossibleSettingsNamingTheFlag(KvPolicyOptions options, string message)
    {
        var e = Assert.Throws<ArgumentException>(() => KvCachePolicies.Create(options));
        Assert.StartsWith(message, e.Message);
    }

    /// <summary>Ratios resolve when the cache is created: one leaving no room for a step is refused before anything runs.</summary>
    [Theory]
    [InlineData("sink", "0.05", "--kv-budget 0.05 gives 2 entries for a 40-token sequence; --kv-policy sink with 4 sinks needs at least 5")]
    [InlineData("window", "0.01", "--kv-budget 0.01 gives 0 entries for a 40-token sequence; --kv-policy window with 0 sinks needs at least 1")]
    [InlineData("h2o", "0.02", "--kv-budget 0.02 gives 0 entries for a 40-token sequence; --kv-policy h2o needs at least 1")]
    [InlineData("window-recompute", "0.02", "--kv-budget 0.02 gives 0 entries for a 40-token sequence; --kv-policy window-recompute needs at least 1")]
    public void RejectsRatiosThatLeaveNoRoomForAStep(string name, string budget, string message)
    {
        using var model = HfParityContract.LoadFixture("llama-gqa");
        var policy = KvCachePolicies.Create(new KvPolicyOptions { Policy = name, Budget = KvBudget.Parse(budget) });
        var e = Assert.Throws<ArgumentException>(() => model.CreateCache(1, 40, policy, 8));
        Assert.Equal(message + ".", e.Message);
    }

    [Fact]
    public void RejectsAnH2oRecentRatioLargerThanATokenBudget()
    {
        var policy = KvCachePolicies.Create(new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.OfTokens(8), Recent = KvBudget.OfRatio(0.5) });
        var e = Assert.Throws<ArgumentException>(() => policy.Capacity(40, 1));
        Assert.StartsWith("--kv-recent 0.5 gives 20 entries, more than the 8 of --kv-budget 8", e.Message);
        Assert.Equal((8, 4), ((HeavyHitterPolicy)KvCachePolicies.Create(new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.OfTokens(8) })).Sizes(40));
    }

    /// <summary>Learned position tables (OPT, GPT-2) must hold every cache index: a budget past them is refused.</summary>
    [Theory]
    [InlineData("opt-prenorm")]
    [InlineData("gpt2")]
    public void RejectsCacheIndexesPastLearnedPositions(string name)
    {
        using var model = HfParityContract.LoadFixture(name);
        var policy = KvCachePolicies.Create(new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(60) });
        var e = Assert.Throws<ArgumentException>(() => model.CreateCache(1, 500, policy, 8));
        Assert.Contains("reaches 67", e.Message);
        Assert.Contains("has 64 learned positions", e.Message);
        using var fits = model.CreateCache(1, 500, policy, 4); // 60 + 4 slots: indexes up to 63
        Assert.Equal(64, fits[0].Capacity);
    }
}
