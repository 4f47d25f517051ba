using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Caching;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Caching;

/// <summary>
/// A slow, obviously correct evicting policy for tests: per sequence and KV head h, keep the first <c>sinks</c> positions
/// and the last <c>windows[h]</c> positions of the sequence, evict the rest after every step (host-side loops, then
/// <see cref="LayerKvCache.Keep"/>). Keep is only called when something is evicted.
/// </summary>
internal class SinkWindowPolicy : IKvCachePolicy
{
    readonly int[] windows;

    public SinkWindowPolicy(int sinks, int[] windows)
    {
        Sinks = sinks;
        this.windows = windows;
    }

    /// <summary>The same policy asking for the attention probabilities (attention then takes its explicit path).</summary>
    public sealed class Observing(int sinks, int[] windows) : SinkWindowPolicy(sinks, windows), IAttentionObserver
    {
        public void ObserveAttention(LayerKvCache layer, Tensor probabilities) { }
    }

    public int Sinks { get; }
    public int Window(int head) => windows[head % windows.Length];
    public int KeepCalls { get; private set; }
    public string Name => "sink-window (test)";
    public bool AppendOnly => false;

    /// <summary>After a step at most sinks + max window entries per row remain; then a step of at most maxStepTokens comes.</summary>
    public int Capacity(int maxSequenceLength, int maxStepTokens) => Math.Min(maxSequenceLength, Sinks + windows.Max() + maxStepTokens);

    public void BeforeAppend(LayerKvCache layer, int incomingTokens)
    {
        if (layer.Length + incomingTokens > layer.Capacity)
            throw new InvalidOperationException($"sink-window: layer {layer.Layer} holds {layer.Length} + {incomingTokens} > {layer.Capacity}");
    }

    public void AfterStep(LayerKvCache layer)
    {
        var positions = HostArrays.Longs(layer.ActivePositions);
        int batch = (int)layer.Positions.shape[0], heads = (int)layer.Positions.shape[1], length = layer.Length;
        var keep = new bool[positions.Length];
        bool evicts = false;
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < heads; h++)
            {
                int row = (b * heads + h) * length;
                long last = -1;
                for (int s = 0; s < length; s++) last = Math.Max(last, positions[row + s]);
                for (int s = 0; s < length; s++)
                {
                    long p = positions[row + s];
                    if (p < 0) continue;
                    keep[row + s] = p < Sinks || p > last - Window(h);
                    evicts |= !keep[row + s];
                }
            }
        if (!evicts) return;
        KeepCalls++;
        using var mask = torch.tensor(keep, new long[] { batch, heads, length }).to(layer.Positions.device);
        layer.Keep(mask);
    }
}

/// <summary>The contract on the sink-window policy: the tight-budget runs evict (unevenly per head).</summary>
public sealed class SinkWindowPolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) => new(new SinkWindowPolicy(2, new[] { sequenceLength, sequenceLength + 3 }));
}

/// <summary>The contract on the sink-window policy taking the explicit path: probabilities with evicted holes.</summary>
public sealed class SinkWindowWithProbabilitiesContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) =>
        new(new SinkWindowPolicy.Observing(2, new[] { sequenceLength, sequenceLength + 3 }));

    protected override double Tolerance => 1e-5;
}

/// <summary>
/// Eviction against references that do not evict: what the sink-window policy keeps is checked entry by entry over a
/// 60-token greedy generation on llama-gqa, and window-only eviction is checked against sliding-window attention.
/// </summary>
public sealed class EvictionReferenceTests
{
    static CausalLanguageModel Llama() => HfParityContract.LoadFixture("llama-gqa");

    /// <summary>Two prompts of 4 and 2 tokens (left padding), so 60 generated tokens fit the 64 positions.</summary>
    static long[][] ShortPrompts(int vocab) => KvCachePolicyContract.Prompts(vocab, 4, 2);

    [Fact]
    public void KeptPositionsFollowTheSinkWindowRuleAtEveryStep()
    {
        const int sinks = 2, generated = 60;
        var windows = new[] { 8, 13 };
        using var model = Llama();
        var prompts = ShortPrompts(model.Info.VocabSize);
        int steps = generated - 1;
        var policy = new SinkWindowPolicy(sinks, windows);
        var recorder = RecordingPolicy.Wrap(policy);
        using var run = new PolicyRun(model, prompts, steps, new KvCacheConfig(recorder));
        using var dense = new PolicyRun(model, prompts, steps, KvCacheConfig.Full);
        Assert.Equal(sinks + 13 + prompts.Max(p => p.Length), run.Cache[0].Capacity);

        long[] next;
        using (var logits = run.Prefill())
        using (dense.Prefill())
            next = PolicyRun.Argmax(logits.select(1, logits.shape[1] - 1));
        Check("prefill");
        for (int step = 0; step < steps; step++)
        {
            using (var logits = run.Decode(next))
            using (dense.Decode(next))
                next = PolicyRun.Argmax(logits);
            Check($"step {step}");
        }
        Assert.True(policy.KeepCalls > 0);

        void Check(string what)
        {
            for (int l = 0; l < model.Info.Layers; l++)
            {
                var host = HostLayer.Read(run.Cache[l]);
                var reference = HostLayer.Read(dense.Cache[l]);
                for (int b = 0; b < prompts.Length; b++)
                {
                    long last = run.Cache.SequenceLengths[b] - 1;
                    for (int h = 0; h < model.Info.KvHeads; h++)
                    {
                        var expected = new List<long>();
                        for (long p = 0; p <= last; p++)
                            if (p < sinks || p > last - windows[h]) expected.Add(p);
                        var kept = new List<long>();
                        var denseSlots = reference.SlotsByPosition(b, h);
                        for (int s = 0; s < host.Capacity; s++)
                        {
                            long p = host.Position(b, h, s);
                            if (p < 0) continue;
                            kept.Add(p);
                            var appended = recorder.Appended[(l, b, h, p)];
                            Assert.True(HostArrays.BitEqual(appended.Key, host.Key(b, h, s)), $"{what} layer {l} ({b},{h}) position {p}: key changed");
                            Assert.True(HostArrays.BitEqual(appended.Value, host.Value(b, h, s)), $"{what} layer {l} ({b},{h}) position {p}: value changed");
                            if (l == 0) // layer-0 keys depend on the token and its position only: the dense run's must be the same bytes
                            {
                                Assert.True(HostArrays.BitEqual(reference.Key(b, h, denseSlots[p]), host.Key(b, h, s)), $"{what} layer 0 ({b},{h}) position {p}: key differs from the dense cache");
                                Assert.True(HostArrays.BitEqual(reference.Value(b, h, denseSlots[p]), host.Value(b, h, s)), $"{what} layer 0 ({b},{h}) position {p}: value differs from the dense cache");
                            }
                        }
                        Assert.True(expected.SequenceEqual(kept),
                            $"{what} layer {l} sequence {b} head {h} (last position {last}, window {windows[h]}): kept [{string.Join(",", kept)}], rule gives [{string.Join(",", expected)}]");
                    }
                }
            }
        }
    }

    /// <summary>Nothing past the window: the policy never evicts, and the logits are those of the dense cache, bit for bit.</summary>
    [Fact]
    public void SequencesWithinSinksPlusWindowEvictNothingAndMatchDense()
    {
        const int steps = 25;
        using var model = Llama();
        var prompts = KvCachePolicyContract.Prompts(model.Info.VocabSize, 6, 3, 5);
        var policy = new SinkWindowPolicy(2, new[] { 6 + steps - 2, 6 + steps + 4 });
        using var run = new PolicyRun(model, prompts, steps, new KvCacheConfig(policy));
        using var dense = new PolicyRun(model, prompts, steps, KvCacheConfig.Full);
        long[] next;
        using (var p = run.Prefill())
        using (var d = dense.Prefill())
        {
            Assert.True(HostArrays.BitEqual(p, d), "prefill logits differ");
            next = PolicyRun.Argmax(d.select(1, d.shape[1] - 1));
        }
        for (int s = 0; s < steps; s++)
        {
            using var p = run.Decode(next);
            using var d = dense.Decode(next);
            Assert.True(HostArrays.BitEqual(p, d), $"step {s}: logits differ from the dense cache");
            next = PolicyRun.Argmax(d);
        }
        Assert.Equal(0, policy.KeepCalls);
    }

    /// <summary>
    /// Keeping only the last W positions after every step is sliding-window attention with window W + 1 (the query sees
    /// itself and the W kept positions before it): the logits of a 58-token generation must equal one forward pass over the
    /// generated sequence of the same weights configured as Mistral with sliding_window = W + 1.
    /// </summary>
    [Fact]
    public void WindowOnlyEvictionEqualsSlidingWindowAttention()
    {
        const int window = 8, generated = 58;
        using var model = Llama();
        var prompts = ShortPrompts(model.Info.VocabSize);
        Assert.True(prompts.Max(p => p.Length) <= window, "the prefill must not be windowed");
        int steps = generated - 1;
        var policy = new SinkWindowPolicy(0, new[] { window });
        using var run = new PolicyRun(model, prompts, steps, new KvCacheConfig(policy));
        using var dense = new PolicyRun(model, prompts, steps, KvCacheConfig.Full);

        var stepLogits = new List<Tensor>();
        var fed = prompts.Select(p => p.ToList()).ToArray();
        long[] next;
        using (var logits = run.Prefill())
        {
            stepLogits.Add(logits.select(1, logits.shape[1] - 1).clone());
            next = PolicyRun.Argmax(stepLogits[^1]);
        }
        dense.Prefill().Dispose();
        for (int s = 0; s < steps; s++)
        {
            for (int b = 0; b < fed.Length; b++) fed[b].Add(next[b]);
            var logits = run.Decode(next);
            using var denseLogits = dense.Decode(next);
            stepLogits.Add(logits);
            next = PolicyRun.Argmax(logits);
            if (s == steps - 1)
            {
                double gap = HfParityContract.MaxAbsDiff(denseLogits, logits);
                Assert.True(gap > 1e-3, $"the window changes nothing (|Δ| {gap:E2} against dense): the test would prove nothing");
            }
        }
        Assert.True(policy.KeepCalls > 0);

        // The reference: the same weights as Mistral with sliding_window = window + 1, one pass over every fed token.
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.ModelDir("llama-gqa"), "config.json")))!.AsObject();
        json["model_type"] = "mistral";
        json["sliding_window"] = window + 1;
        var config = HfConfig.Parse(json.ToJsonString(), "llama-gqa-as-mistral/config.json");
        using var weights = CheckpointReader.Open(Fixtures.ModelDir("llama-gqa"));
        using var windowed = CausalLanguageModel.Create(config, weights, torch.CPU, ModelDType.Float32);
        var sequences = fed.Select(f => f.ToArray()).ToArray();
        using var full = HfParityContract.FullLogits(windowed, sequences);
        int len = sequences.Max(x => x.Length);
        for (int s = 0; s < stepLogits.Count; s++)
            for (int b = 0; b < prompts.Length; b++)
            {
                int slot = len - sequences[b].Length + prompts[b].Length - 1 + s;
                double diff = HfParityContract.MaxAbsDiff(full[b, slot], stepLogits[s][b]);
                Assert.True(diff <= 1e-5, $"step {s} sequence {b}: window-only eviction vs sliding-window attention max |Δlogit| = {diff:E2}");
            }
        foreach (var t in stepLogits) t.Dispose();
    }
}
