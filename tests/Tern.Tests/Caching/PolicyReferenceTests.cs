using Tern.Caching;
using Tern.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Caching;

/// <summary>
/// The sink and h2o policies against <see cref="ReferenceLlama"/>, which keeps everything and attends through keep sets its
/// own copy of each paper's rule recomputes: over a 300-token greedy generation of a left-padded batch of two prompts, far past
/// the fixtures' 64 trained positions, the kept positions of every layer, sequence and KV head must be the same at every step,
/// and so must the logits. Fixtures: llama-gqa (2 query heads per KV head) and llama-linear-relu-f16 (no GQA).
/// The runs are long op loops: they run alone, because TorchSharp leaves implicit Scalars to the GC, which other tests'
/// allocations make collect (and finalize a Scalar in use) far more often (dotnet/TorchSharp#1434).
/// </summary>
[Collection(nameof(PolicyReferenceTests))]
public sealed class PolicyReferenceTests
{
    const int Generated = 300;

    public static TheoryData<string> Llamas => new() { "llama-gqa", "llama-linear-relu-f16" };

    [Theory]
    [MemberData(nameof(Llamas))]
    public void SinkKeepsWhatTheReferenceKeepsAndGivesItsLogits(string fixture)
    {
        const int budget = 24, sinks = 4;
        Compare(fixture, new StreamingPolicy(KvBudget.OfTokens(budget), sinks), positionsByIndex: true,
            (_, _, kept, _) => kept.Count <= budget ? kept : kept.Where(j => j < sinks || j > kept.Max() - (budget - sinks)).ToList());
    }

    [Theory]
    [MemberData(nameof(Llamas))]
    public void HeavyHitterKeepsWhatTheReferenceKeepsAndGivesItsLogits(string fixture)
    {
        const int budget = 24, recent = 9;
        Compare(fixture, new HeavyHitterPolicy(KvBudget.OfTokens(budget), KvBudget.OfTokens(recent)), positionsByIndex: false,
            (_, _, kept, scores) =>
            {
                if (kept.Count <= budget) return kept;
                int last = kept.Max();
                var heavy = kept.Where(j => j <= last - recent).OrderByDescending(j => scores[j]).Take(budget - recent);
                return kept.Where(j => j > last - recent).Concat(heavy).Order().ToList();
            });
    }

    static void Compare(string fixture, IKvCachePolicy policy, bool positionsByIndex, Func<int, int, List<int>, double[], List<int>> rule)
    {
        using var model = HfParityContract.LoadFixture(fixture);
        var prompts = KvCachePolicyContract.Prompts(model.Info.VocabSize, 9, 4);
        var references = prompts.Select(_ => new ReferenceLlama(fixture, 9 + Generated) { PositionsByIndex = positionsByIndex, Evict = rule }).ToArray();
        using var run = new PolicyRun(model, prompts, Generated, new KvCacheConfig(policy, rollPositions: positionsByIndex));
        try
        {
            long[] next;
            using (var logits = run.Prefill())
            {
                var last = logits.select(1, logits.shape[1] - 1);
                Check(run, references, last, references.Select((r, b) => r.Step(prompts[b])).ToArray(), "prefill");
                next = PolicyRun.Argmax(last);
            }
            for (int step = 0; step < Generated - 1; step++)
            {
                using var logits = run.Decode(next);
                var expected = references.Select((r, b) => r.Step(new[] { next[b] })).ToArray();
                Check(run, references, logits, expected, $"step {step}");
                next = PolicyRun.Argmax(logits);
            }
            Assert.True(run.Cache.SequenceLengths.Min() > 64 + 4 * 24, "the run must go far past the budget and the trained context");
        }
        finally
        {
            foreach (var r in references) r.Dispose();
        }
    }

    /// <summary>Kept sets identical, logits within fp32 rounding.</summary>
    static void Check(PolicyRun run, ReferenceLlama[] references, Tensor logits, float[][] expected, string what)
    {
        var cache = run.Cache;
        for (int l = 0; l < cache.LayerCount; l++)
        {
            var host = HostLayer.Read(cache[l]);
            for (int b = 0; b < references.Length; b++)
                for (int g = 0; g < host.Heads; g++)
                {
                    var kept = Enumerable.Range(0, host.Capacity).Select(s => host.Position(b, g, s)).Where(p => p >= 0).Select(p => (int)p).Order().ToList(); // h2o's steady state fills freed slots in place
                    var reference = references[b].Kept[l][g];
                    Assert.True(kept.SequenceEqual(reference),
                        $"{what} layer {l} sequence {b} KV head {g}: kept [{string.Join(",", kept)}], reference [{string.Join(",", reference)}]");
                }
        }
        for (int b = 0; b < references.Length; b++)
        {
            double gap = HostArrays.MaxAbsDiff(expected[b], HostArrays.Floats(logits[b]));
            Assert.True(gap <= 2e-4, $"{what} sequence {b}: max |Δlogit| against the reference = {gap:E2}");
        }
    }
}

[CollectionDefinition(nameof(PolicyReferenceTests), DisableParallelization = true)]
public sealed class PolicyReferenceCollection;
