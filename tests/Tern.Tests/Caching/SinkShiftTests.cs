using Tern.Caching;
using Tern.Generation;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using Generator = Tern.Generation.Generator;
using static Tern.Tests.TensorChecks;

namespace Tern.Tests.Caching;

/// <summary>
/// StreamingLLM's eviction by a shift (<see cref="LayerKvCache.KeepPrefixAndSuffix"/>: the window's block moved down to slot S,
/// its keys rotated again at their new cache index from a slice of the rotary tables) against the general compaction it
/// replaces for rows without holes (<see cref="LayerKvCache.Keep"/> by the position rule, every key rotated again by rank):
/// the same entries, values, positions and policy state in the same slots, and generations equal bit for bit.
/// </summary>
public sealed class SinkShiftTests
{
    /// <summary>The sink policy as it runs (the shift for rows without holes, counted in <see cref="Shifts"/>) or, with
    /// <paramref name="general"/>, as it evicted before the shift: the position rule, compacted by sorting (the exact reference).</summary>
    sealed class Sink(StreamingPolicy inner, bool general) : IKvCachePolicy
    {
        public int Shifts;
        public string Name => inner.Name;
        public bool AppendOnly => false;
        public int Capacity(int maxSequenceLength, int maxStepTokens) => inner.Capacity(maxSequenceLength, maxStepTokens);
        public void BeforeAppend(LayerKvCache layer, int incomingTokens) => inner.BeforeAppend(layer, incomingTokens);
        public bool EvictsAfter(LayerKvCache layer, int incomingTokens) => inner.EvictsAfter(layer, incomingTokens);
        public bool EvictsWithoutReadBack => true;

        public void AfterStep(LayerKvCache layer)
        {
            if (!EvictsAfter(layer, 0)) return;
            if (!general)
            {
                if (!layer.HasHoles) Interlocked.Increment(ref Shifts);
                inner.AfterStep(layer);
                return;
            }
            int c = inner.Budget(layer.MaxSequenceLength);
            using var scope = torch.NewDisposeScope();
            var positions = layer.ActivePositions;
            var last = positions.amax(new long[] { -1 }, keepdim: true);
            layer.Keep(positions.lt(inner.Sinks) | positions.gt(last - (c - inner.Sinks)), c);
        }
    }

    const int Rows = 3, Heads = 2, HeadDim = 64;

    static KvCache Cache(IKvCachePolicy policy, int bits, int capacity, int maxSequence) => KvCache.Create(new KvCacheOptions
    {
        BatchSize = Rows, Layers = 1, KvHeads = Heads, HeadDim = HeadDim, Capacity = capacity, MaxSequenceLength = maxSequence,
        DType = ScalarType.Float32, Bits = bits, RollPositions = true, Device = torch.CPU,
    }, policy);

    /// <summary>
    /// Token by token (and a first block of <paramref name="prompt"/>), the same entries through a cache evicting by the shift
    /// and one evicting by the general compaction; after every step both layers hold the same slots: positions, keys, values
    /// (codes moved as they are, so quantized entries read back bit-identical) and per-entry state.
    /// </summary>
    [Theory]
    [InlineData(4, 12, 1, 16, 9)]
    [InlineData(1, 6, 1, 16, 3)]
    [InlineData(0, 5, 1, 16, 8)]   // window: no sinks
    [InlineData(4, 12, 5, 16, 14)] // amortised: five evicted at a time
    [InlineData(2, 3, 7, 8, 20)]   // more evicted than kept: source and target do not overlap
    [InlineData(3, 9, 2, 4, 11)]
    public void TheShiftKeepsWhatTheGeneralCompactionKeeps(int sinks, int window, int evictEvery, int bits, int prompt)
    {
        var policy = new StreamingPolicy(KvBudget.OfTokens(sinks + window), sinks, evictEvery);
        const int tokens = 60;
        int capacity = policy.Capacity(tokens, prompt);
        using var shifted = Cache(policy, bits, capacity, tokens);
        using var general = Cache(new Sink(policy, general: true), bits, capacity, tokens);
        var gen = new torch.Generator(7);
        for (int t = 0; t < tokens;)
        {
            using var scope = torch.NewDisposeScope();
            int n = t == 0 ? prompt : 1;
            var keys = torch.randn(new long[] { Rows, Heads, n, HeadDim }, generator: gen);
            var values = torch.randn(new long[] { Rows, Heads, n, HeadDim }, generator: gen);
            var positions = torch.arange(t, t + n, ScalarType.Int64).expand(Rows, n);
            var state = torch.randn(new long[] { Rows, Heads, n, 2 }, generator: gen);
            foreach (var c in new[] { shifted, general })
            {
                var layer = c[0];
                layer.Update(keys, values, positions, hasPadding: false);
                layer.EntryState(2).narrow(2, layer.Length - n, n).copy_(state); // what a policy would accumulate
                layer.EndStep();
            }
            t += n;
            var (a, b) = (shifted[0], general[0]);
            Assert.Equal(b.Length, a.Length);
            Assert.False(a.HasHoles);
            Assert.Equal(b.Positions.data<long>().ToArray(), a.Positions.data<long>().ToArray()); // free slots -1 in both
            Assert.True(Same(b.ActiveKeys, a.ActiveKeys), $"keys after {t} tokens");
            Assert.True(Same(b.ActiveValues, a.ActiveValues), $"values after {t} tokens");
            Assert.True(Same(b.EntryState(2), a.EntryState(2)), $"entry state after {t} tokens"); // zeros past the length
        }
        Assert.True(shifted[0].Rewrites > 0, "no eviction ran");
    }

    /// <summary>A cache sized for a prompt's prefill has more slots than its policy fills at a decode step: a static-shape step
    /// attends over the slots the policy can hold after it (sinks + window + evict-every), a full cache over all of them, and
    /// a step that finds more in use is refused rather than attending over part of them.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(8)]
    public void StaticStepsAttendOverTheSlotsThePolicyFills(int evictEvery)
    {
        var policy = new StreamingPolicy(KvBudget.OfTokens(12), sinks: 2, evictEvery);
        using var cache = Cache(policy, 16, policy.Capacity(60, 32), 60); // room for a 32-token prompt step
        var layer = cache[0];
        Assert.Equal(12 + evictEvery - 1 + 32, layer.Capacity);
        Assert.Equal(12 + evictEvery, layer.StaticStepSlots(1));
        Assert.Equal(12 + evictEvery - 1 + 4, layer.StaticStepSlots(4));
        layer.Update(torch.randn(Rows, Heads, 32, HeadDim), torch.randn(Rows, Heads, 32, HeadDim), torch.arange(32L).expand(Rows, 32), hasPadding: false);
        Assert.Throws<InvalidOperationException>(() => layer.StaticStepSlots(1)); // the prompt is in, not yet evicted
        layer.EndStep();
        Assert.Equal(12, layer.Length);
        Assert.Equal(12 + evictEvery, layer.StaticStepSlots(1));
        using var full = Cache(DensePolicy.Instance, 16, 60, 60);
        Assert.Equal(60, full[0].StaticStepSlots(1));
    }

    /// <summary>Rows left uneven by padding have holes: the policy takes the general compaction, and the shift refuses them.</summary>
    [Fact]
    public void RowsWithHolesTakeTheGeneralCompaction()
    {
        var policy = new StreamingPolicy(KvBudget.OfTokens(6), sinks: 2);
        using var cache = Cache(policy, 16, policy.Capacity(20, 8), 20);
        var layer = cache[0];
        var positions = torch.tensor(new long[] { -1, -1, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7, -1, -1, -1, 0, 1, 2, 3, 4 }, new long[] { Rows, 8 });
        layer.Update(torch.randn(new long[] { Rows, Heads, 8, HeadDim }), torch.randn(new long[] { Rows, Heads, 8, HeadDim }), positions, hasPadding: true);
        Assert.Throws<InvalidOperationException>(() => layer.KeepPrefixAndSuffix(2, 4));
        layer.EndStep();
        Assert.Equal(6, layer.Length);
        Assert.Equal(new long[] { 0, 1, 2, 3, 4, 5 }, layer.ActivePositions[0, 0].data<long>().ToArray());
        Assert.Equal(new long[] { 0, 1, 4, 5, 6, 7 }, layer.ActivePositions[1, 1].data<long>().ToArray());
        Assert.Equal(new long[] { 0, 1, 2, 3, 4, -1 }, layer.ActivePositions[2, 0].data<long>().ToArray());
    }

    /// <summary>Keys rotated from a slice of the tables are the keys rotated by gathering the same positions, bit for bit, in
    /// fp32 and bf16, with full and partial rotary dimensions.</summary>
    [Theory]
    [InlineData(ScalarType.Float32, 1.0)]
    [InlineData(ScalarType.BFloat16, 1.0)]
    [InlineData(ScalarType.Float32, 0.25)]
    public void ARotatedRangeIsTheGatheredRotation(ScalarType dtype, double partial)
    {
        using var rotary = new RotaryEmbedding(new RopeSettings(10000, "default", 1, 1, 4, 2048, partial), HeadDim, torch.CPU, dtype);
        using var scope = torch.NewDisposeScope();
        var keys = torch.randn(new long[] { Rows, Heads, 37, HeadDim }).to(dtype);
        var ranks = torch.arange(5, 42, ScalarType.Int64).expand(Rows, Heads, 37);
        Assert.True(Same(rotary.RotateCached(keys, ranks, 42), rotary.RotateRange(keys, 5)));
    }

    public static TheoryData<string, int, int, bool, ModelDType> Generations => new()
    {
        { "llama-gqa", 1, 16, false, ModelDType.Float32 },
        { "llama-gqa", 6, 16, false, ModelDType.Float32 },
        { "llama-gqa", 1, 8, false, ModelDType.Float32 },
        { "llama-gqa", 1, 16, true, ModelDType.Float32 },
        { "llama-gqa", 6, 16, true, ModelDType.Float32 },
        { "neox-parallel", 1, 16, false, ModelDType.Float32 }, // partial rotary dimensions
        { "llama-gqa", 1, 16, false, ModelDType.BFloat16 },
    };

    /// <summary>
    /// Greedy generation with sink evicting by the shift equals the general compaction bit for bit (tokens, and logits where
    /// eager): rows of one length (the shift runs) and rows of different lengths (padding: the general compaction runs in
    /// both), eager and with static shapes (evicting steps eager, the plain steps as one graph body).
    /// </summary>
    [Theory]
    [MemberData(nameof(Generations))]
    public void GenerationEqualsTheGeneralCompaction(string fixture, int evictEvery, int bits, bool staticShapes, ModelDType dtype)
    {
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), new ModelLoadOptions { Device = DeviceKind.Cpu, DType = dtype });
        var policy = new StreamingPolicy(KvBudget.OfTokens(12), sinks: 3, evictEvery: evictEvery);
        var options = new GenerationOptions { MaxNewTokens = 36, IgnoreEos = true, OutputLogits = !staticShapes, ForceStaticShapes = staticShapes };
        var ct = TestContext.Current.CancellationToken;
        var batches = new[]
        {
            new IReadOnlyList<int>[] { new[] { 5, 9, 17, 33, 4, 8, 21 }, new[] { 7, 3, 11, 12, 13, 14, 15 } },
            new IReadOnlyList<int>[] { new[] { 5, 9, 17, 33, 4, 8, 21 }, new[] { 7, 3 } },
        };
        for (int i = 0; i < batches.Length; i++)
        {
            var shift = new Sink(policy, general: false);
            var byShift = new Generator(model).GenerateTokens(batches[i], options with { Cache = new KvCacheConfig(shift, bits, rollPositions: true) }, ct);
            var bySort = new Generator(model).GenerateTokens(batches[i], options with { Cache = new KvCacheConfig(new Sink(policy, general: true), bits, rollPositions: true) }, ct);
            Assert.Equal(i == 0, shift.Shifts > 0);
            for (int r = 0; r < batches[i].Length; r++) Assert.Equal(bySort.Sequences[r].Tokens, byShift.Sequences[r].Tokens);
            if (byShift.Logits is null) continue;
            for (int step = 0; step < byShift.Logits.Count; step++)
                Assert.Equal(0f, (byShift.Logits[step] - bySort.Logits![step]).abs().max().item<float>());
            foreach (var t in byShift.Logits.Concat(bySort.Logits!)) t.Dispose();
        }
    }
}

/// <summary>
/// Indicative CPU timing of one sink eviction over a 7B-like cache shape (32 layers, 32 KV heads, 4,096 + 1 slots, a small
/// head dim): the general compaction with every key rotated again by rank, against the shift with the moved block rotated
/// from a slice of the tables. Explicit (<c>dotnet test -- xUnit.Explicit=only</c>): a measurement, not a check.
/// </summary>
public sealed class SinkShiftMeasurement
{
    [Fact(Explicit = true)]
    public void OneEvictionGeneralVersusShift()
    {
        const int layers = 32, heads = 32, headDim = 16, sinks = 4, budget = 4096, repeats = 7;
        using var rotary = new RotaryEmbedding(new RopeSettings(10000, "default", 1, 1, 4, 4096, 1.0), headDim, torch.CPU, ScalarType.Float32);
        var policy = new StreamingPolicy(KvBudget.OfTokens(budget), sinks);
        double Median(Action<LayerKvCache> evict)
        {
            using var cache = KvCache.Create(new KvCacheOptions
            {
                BatchSize = 1, Layers = layers, KvHeads = heads, HeadDim = headDim, Capacity = budget + 1, DType = ScalarType.Float32,
                RollPositions = true, Device = torch.CPU,
            }, policy);
            var times = new List<double>();
            for (int r = 0; r < repeats; r++)
            {
                using var scope = torch.NewDisposeScope();
                for (int l = 0; l < layers; l++)
                {
                    var layer = cache[l];
                    layer.Clear();
                    layer.Append(torch.randn(1, heads, budget + 1, headDim), torch.randn(1, heads, budget + 1, headDim),
                        torch.arange(budget + 1, ScalarType.Int64).unsqueeze(0), hasPadding: false);
                }
                var watch = System.Diagnostics.Stopwatch.StartNew();
                for (int l = 0; l < layers; l++) evict(cache[l]);
                times.Add(watch.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            return times[repeats / 2];
        }
        double general = Median(layer =>
        {
            using var scope = torch.NewDisposeScope();
            var positions = layer.ActivePositions;
            layer.Keep(positions.lt(sinks) | positions.gt(positions.amax(new long[] { -1 }, keepdim: true) - (budget - sinks)), budget);
            var ranks = layer.ActivePositions.ge(0).to(ScalarType.Int64).cumsum(-1) - 1; // what attention did after it
            layer.AttendedKeys().narrow(2, 0, layer.Length).copy_(rotary.RotateCached(layer.StoredKeys(0, layer.Length), ranks, layer.Capacity));
        });
        double shift = Median(layer =>
        {
            using var scope = torch.NewDisposeScope();
            layer.KeepPrefixAndSuffix(sinks, budget - sinks);
            layer.AttendedKeys().narrow(2, sinks, budget - sinks).copy_(rotary.RotateRange(layer.StoredKeys(sinks, budget - sinks), sinks));
        });
        TestContext.Current.TestOutputHelper!.WriteLine($"one eviction, {layers} layers: general {general:F1} ms, shift {shift:F1} ms (median of {repeats})");
    }
}
