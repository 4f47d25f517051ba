using Tern.Caching;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Models;

/// <summary>One forward pass over rows of caches of different configurations (serving pools of different KV policies): every
/// range of rows gets the logits a step over its cache alone gives, on every architecture (rotary keys stored rotated and at
/// their cache index side by side, learned positions, evicting and observing policies, quantized entries).</summary>
public sealed class SegmentedStepTests
{
    static KvCacheConfig Policy(string name, string? budget, int bits = 16, int? sinks = null) => KvCachePolicies.Create(new KvPolicyOptions
    {
        Policy = name, Budget = budget is null ? null : KvBudget.Parse(budget), Bits = bits, Sinks = sinks,
    });

    [Theory]
    [InlineData("llama-gqa")]
    [InlineData("neox-parallel")]
    [InlineData("opt-prenorm")]
    [InlineData("gpt2")]
    public void AStepOverSeveralCachesEqualsEachCacheAlone(string fixture)
    {
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), new ModelLoadOptions { Device = DeviceKind.Cpu });
        var configs = new[] { KvCacheConfig.Full, Policy("sink", "8", sinks: 2), Policy("h2o", "6"), Policy("window", "5"), Policy("full", null, bits: 8) };
        var prompts = new[] { new[] { 5, 9, 2, 7 }, new[] { 3, 1, 4, 1, 5, 9 } };
        const int steps = 10, longest = 6 + steps;
        var alone = configs.Select(c => model.CreateCache(2, longest, c, maxStepTokens: 6)).ToArray();
        var together = configs.Select(c => model.CreateCache(2, longest, c, maxStepTokens: 6)).ToArray();
        try
        {
            var next = new long[configs.Length * 2];
            for (int c = 0; c < configs.Length; c++)
            {
                using var scope = torch.NewDisposeScope();
                var prefill = ForwardBatch.LeftPadded(prompts, model.Device, lastPositionOnly: true);
                var logits = model.Forward(prefill, alone[c]);
                Assert.Equal(0, (logits - model.Forward(prefill, together[c])).abs().max().item<float>());
                logits.argmax(-1).data<long>().ToArray().CopyTo(next, 2 * c);
            }
            int[] fed = prompts.Select(p => p.Length).ToArray();
            for (int step = 0; step < steps; step++)
            {
                using var scope = torch.NewDisposeScope();
                var positions = Enumerable.Range(0, next.Length).Select(i => (long)fed[i % 2] + step).ToArray();
                var batch = new ForwardBatch
                {
                    InputIds = torch.tensor(next, new long[] { next.Length, 1 }),
                    Positions = torch.tensor(positions, new long[] { next.Length, 1 }),
                    RealTokens = Enumerable.Repeat(1, next.Length).ToArray(),
                    MaxPosition = (int)positions.Max(),
                    LastPositionOnly = true,
                };
                var mixed = model.Forward(batch, together);
                for (int c = 0; c < configs.Length; c++)
                {
                    var own = model.Forward(batch.Rows(2 * c, 2), alone[c]);
                    var rows = mixed.narrow(0, 2 * c, 2);
                    Assert.True((own - rows).abs().max().item<float>() <= 1e-5f, $"{configs[c].Eviction.Name}, step {step}");
                    Assert.Equal(own.argmax(-1).data<long>().ToArray(), rows.argmax(-1).data<long>().ToArray());
                }
                mixed.argmax(-1).data<long>().ToArray().CopyTo(next, 0);
            }
            // The policies did their work meanwhile: the sink and window caches evicted, h2o kept its budget.
            Assert.True(together[1].Length < 6 + steps && together[3].Length < 6 + steps, $"{together[1].Length}, {together[3].Length}");
        }
        finally
        {
            foreach (var c in alone.Concat(together)) c.Dispose();
        }
    }
}
