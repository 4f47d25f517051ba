using Tern.Caching;
using Tern.Generation;
using Tern.Runtime;
using Tern.Serving;

namespace Tern.Tests.Runtime;

/// <summary>Option errors keep their options logical: the message names them by the options properties that set them (never
/// as command-line flags), and a front end renders them in its own words.</summary>
public sealed class OptionExceptionTests
{
    [Fact]
    public void TheMessageNamesOptionsNeutrallyAndRendersThemOnRequest()
    {
        int sinks = 4;
        var e = new OptionException($"{TernOption.KvSink} {sinks} must be smaller than {TernOption.KvBudget} {sinks}; {TernOption.KvSink} hold the sinks.");
        Assert.IsAssignableFrom<ArgumentException>(e);
        Assert.Equal("KvPolicyOptions.Sinks 4 must be smaller than KvPolicyOptions.Budget 4; KvPolicyOptions.Sinks hold the sinks.", e.Message);
        Assert.Equal(new[] { TernOption.KvSink, TernOption.KvBudget }, e.Options);
        Assert.Equal(TernOption.KvSink, e.Option);
        Assert.Equal("<sink> 4 must be smaller than <budget> 4; <sink> hold the sinks.",
            e.Render(option => option == TernOption.KvSink ? "<sink>" : "<budget>"));
    }

    /// <summary>Option errors the library raises, with the option to blame.</summary>
    public static TheoryData<Action, TernOption> OptionErrors => new()
    {
        { () => KvBudget.Parse("lots"), TernOption.KvBudget },
        { () => KvBudget.Parse("0", TernOption.KvRecent), TernOption.KvRecent },
        { () => new KvPolicyOptions { Policy = "lru" }.Validate(), TernOption.KvPolicy },
        { () => new KvPolicyOptions { Policy = "sink", Budget = KvBudget.OfTokens(8), Sinks = 9 }.Validate(), TernOption.KvSink },
        { () => new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.OfTokens(8), EvictEvery = 0 }.Validate(), TernOption.KvEvictEvery },
        { () => new KvCacheConfig(new StreamingPolicy(KvBudget.OfTokens(8), sinks: 0), bits: 5), TernOption.KvBits },
        { () => new GenerationOptions { PrefillChunk = -1 }.Validate(), TernOption.PrefillChunk },
        { () => new ServingOptions { MaxBatchSize = 0 }.Validate(), TernOption.MaxBatchSize },
        { () => new ServingOptions { MaxNewTokens = 0 }.Validate(), TernOption.ServingMaxNewTokens },
    };

    [Theory]
    [MemberData(nameof(OptionErrors))]
    public void LibraryErrorsNameTheOptionWithoutFlags(Action fail, TernOption option)
    {
        var e = Assert.Throws<OptionException>(fail);
        Assert.Equal(option, e.Option);
        Assert.StartsWith(option.Name, e.Message);
        Assert.DoesNotContain("--", e.Message);
    }
}
