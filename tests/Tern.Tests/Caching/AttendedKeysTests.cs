using Tern.Caching;
using Tern.Generation;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using Generator = Tern.Generation.Generator;

namespace Tern.Tests.Caching;

/// <summary>
/// StreamingLLM's keys at their cache index are kept across steps (<see cref="LayerKvCache.AttendedKeys"/>): a step rotates only
/// its own keys unless something moved entries. The same run with every step rotating every slot again gives the same
/// logits bit for bit, eager and with static shapes, padded rows and amortised eviction included.
/// </summary>
public sealed class AttendedKeysTests
{
    [Theory]
    [InlineData("llama-gqa", 1, false)]
    [InlineData("llama-gqa", 8, false)]
    [InlineData("neox-parallel", 5, false)]
    [InlineData("llama-gqa", 8, true)]
    public void KeptRotationsEqualRotatingEverySlotEveryStep(string fixture, int evictEvery, bool staticShapes)
    {
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), new ModelLoadOptions { Device = DeviceKind.Cpu });
        var prompts = new IReadOnlyList<int>[] { new[] { 5, 9, 17, 33, 4, 8, 21 }, new[] { 7, 3 }, new[] { 11, 12, 13, 14, 15 } };
        var sink = new StreamingPolicy(KvBudget.OfTokens(12), sinks: 2, evictEvery: evictEvery);
        var options = new GenerationOptions { MaxNewTokens = 40, IgnoreEos = true, OutputLogits = !staticShapes, ForceStaticShapes = staticShapes };
        var ct = TestContext.Current.CancellationToken;
        var kept = new Generator(model).GenerateTokens(prompts, options with { Cache = new KvCacheConfig(sink, rollPositions: true) }, ct);
        var rotatedEachStep = new Generator(model).GenerateTokens(prompts, options with { Cache = new KvCacheConfig(new RotateEverySlot(sink), rollPositions: true) }, ct);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(kept.Sequences[i].Tokens, rotatedEachStep.Sequences[i].Tokens);
        if (kept.Logits is null) return;
        for (int step = 0; step < kept.Logits.Count; step++)
            Assert.Equal(0f, (kept.Logits[step] - rotatedEachStep.Logits![step]).abs().max().item<float>());
        foreach (var t in kept.Logits.Concat(rotatedEachStep.Logits!)) t.Dispose();
    }

    /// <summary>The wrapped policy, with every layer's kept rotations marked stale before each step.</summary>
    sealed class RotateEverySlot(IKvCachePolicy inner) : IKvCachePolicy
    {
        public string Name => inner.Name;
        public bool AppendOnly => inner.AppendOnly;
        public int Capacity(int maxSequenceLength, int maxStepTokens) => inner.Capacity(maxSequenceLength, maxStepTokens);
        public bool EvictsAfter(LayerKvCache layer, int incomingTokens) => inner.EvictsAfter(layer, incomingTokens);
        public void AfterStep(LayerKvCache layer) => inner.AfterStep(layer);

        public void BeforeAppend(LayerKvCache layer, int incomingTokens)
        {
            layer.AttendedKeysStale = true;
            inner.BeforeAppend(layer, incomingTokens);
        }
    }
}
