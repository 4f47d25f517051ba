using Tern.Caching;
using Tern.Generation;
using Tern.Serving;
using Tern.Tests.Models;

namespace Tern.Tests.Serving;

/// <summary>The serving engine steps MultiHyena models through its pools without knowing they are recurrent: requests joining
/// mid-run, leaving (rows moved), prefilled in chunks, with dynamic and static shapes, give <see cref="Generator"/>'s tokens.</summary>
public sealed class HyenaServingTests : IDisposable
{
    readonly TempDir dir = new();
    public void Dispose() => dir.Dispose();

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static GenerationOptions Greedy(int maxNew) => new() { MaxNewTokens = maxNew, StopTokenIds = Array.Empty<int>() };

    static readonly int[][] Prompts =
    {
        new[] { 5, 9, 13, 17, 21, 25, 30 }, new[] { 3, 40 }, new[] { 7, 8, 9, 10, 11 }, new[] { 33 }, new[] { 12, 14, 16, 18, 20, 22, 24, 26, 28 },
    };

    [Fact]
    public void ARequestForAnEvictingOrQuantisedCacheIsRefusedWhenSubmitted()
    {
        using var model = TinyHyena.Load(TinyHyena.Save(dir));
        using var engine = ServingEngine.Start(model, null, new ServingOptions { MaxBatchSize = 2 });
        var sink = KvCachePolicies.Create(new KvPolicyOptions { Policy = "sink", Budget = KvBudget.Parse("8"), Sinks = 2 });
        var e = Assert.Throws<ServingException>(() => { engine.Submit(Prompts[0], Greedy(4) with { Cache = sink }, Ct); });
        Assert.Equal(ServingError.InvalidRequest, e.Error);
        Assert.Equal("kv_policy", e.Field);
        var bits = KvCachePolicies.Create(new KvPolicyOptions { Policy = "full", Bits = 4 });
        Assert.Equal("kv_bits", Assert.Throws<ServingException>(() => { engine.Submit(Prompts[0], Greedy(4) with { Cache = bits }, Ct); }).Field);
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public async Task RequestsJoiningMidRunGetTheGeneratorsTokens(bool distilled, bool staticShapes)
    {
        string folder = TinyHyena.Save(dir);
        if (distilled) folder = TinyHyena.Distill(dir, folder);
        using var model = TinyHyena.Load(folder);
        var generator = new Generator(model);
        var expected = Prompts.Select(p => generator.GenerateTokens(new[] { p }, Greedy(20)).Sequences[0].Tokens.ToArray()).ToArray();

        foreach (int prefillBudget in new[] { 64, 4 }) // 4: the longer prompts are prefilled in chunks while others decode
        {
            using var engine = ServingEngine.Start(model, null, new ServingOptions
            {
                MaxBatchSize = 4, ForceStaticShapes = staticShapes, OverlapSteps = false, MaxPrefillTokensPerStep = prefillBudget,
            });
            var staggered = new List<(int Prompt, ServingRequest Request, int MaxNew)>();
            for (int i = 0; i < Prompts.Length; i++)
            {
                int maxNew = 8 + 3 * i; // rows leave at different steps: the last row moves into the freed one
                var request = engine.Submit(Prompts[i], Greedy(maxNew), Ct);
                staggered.Add((i, request, maxNew));
                await request.Tokens.WaitToReadAsync(Ct);
            }
            foreach (var (prompt, request, maxNew) in staggered)
                Assert.Equal(expected[prompt][..maxNew], (await request.Completion).Tokens);
        }
    }
}
