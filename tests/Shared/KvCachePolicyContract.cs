using Tern.Caching;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests;

/// <summary>
/// The contract every <see cref="IKvCachePolicy"/> must keep (see the interface's remarks):
/// (a) with a budget that covers the whole sequence it gives the logits of <see cref="DensePolicy"/>;
/// (b) whatever it keeps is bit-identical to what was appended and keeps its original position, in the original order;
/// (c) when it asks for attention probabilities, they are distributions over the occupied, causally visible slots;
/// (d) <see cref="IKvCachePolicy.Capacity"/> leaves room for everything the policy appends before it evicts.
/// A subclass supplies the cache (the policy, with the bits and position rolling it runs with); the same tests run for every
/// policy.
/// </summary>
public abstract class KvCachePolicyContract
{
    /// <summary>The cache under test, its policy with a budget that covers a whole sequence of <paramref name="sequenceLength"/>
    /// tokens. The contract also asks for smaller lengths (a budget the sequence outgrows) to make the policy evict.</summary>
    protected abstract KvCacheConfig CreateConfig(int sequenceLength);

    /// <summary>Where the fixture models run.</summary>
    protected virtual DeviceKind Device => DeviceKind.Cpu;

    /// <summary>Largest |Δ| accepted against the dense run, for logits and for keys/values past the first layer
    /// (0: bit-identical). Policies that take the explicit attention path differ from fused SDPA by rounding.</summary>
    protected virtual double Tolerance => 1e-6;

    /// <summary>Largest |Δ| accepted between layer-0 entries and the dense run's (0: bit-identical); quantized caches
    /// store approximations.</summary>
    protected virtual double StorageTolerance => 0;

    /// <summary>The budget of the "tight" runs, which the sequence outgrows so that an evicting policy evicts.</summary>
    protected virtual int TightBudget(int sequenceLength) => sequenceLength / 2;

    /// <summary>GQA (llama-gqa), learned positions (gpt2, opt), partial rotary (neox), sliding window (mistral).</summary>
    public static TheoryData<string> ContractModels => new() { "llama-gqa", "gpt2", "neox-parallel", "mistral-window", "opt-prenorm" };

    public static TheoryData<string, bool> ContractModelsAndBudgets
    {
        get
        {
            var data = new TheoryData<string, bool>();
            foreach (string name in new[] { "llama-gqa", "gpt2", "neox-parallel", "mistral-window" })
            {
                data.Add(name, false);
                data.Add(name, true);
            }
            return data;
        }
    }

    /// <summary>Decode steps after the prefill.</summary>
    protected const int DecodeSteps = 20;

    CausalLanguageModel Load(string name) => HfParityContract.LoadFixture(name, ModelDType.Float32, Device);

    /// <summary>Three prompts of different lengths (a left-padded batch), tokens drawn from a fixed seed.</summary>
    internal static long[][] Prompts(int vocab, params int[] lengths)
    {
        if (lengths.Length == 0) lengths = new[] { 9, 4, 13 };
        var random = new Random(1234);
        return lengths.Select(n => Enumerable.Range(0, n).Select(_ => (long)random.Next(3, vocab)).ToArray()).ToArray();
    }

    // ---------------------------------------------------------------- (a) dense equivalence

    [Theory]
    [MemberData(nameof(ContractModels))]
    public void LogitsEqualDenseWhenTheBudgetCoversTheSequence(string name)
    {
        using var model = Load(name);
        var prompts = Prompts(model.Info.VocabSize);
        int sequence = prompts.Max(p => p.Length) + DecodeSteps;
        using var dense = new PolicyRun(model, prompts, DecodeSteps, KvCacheConfig.Full);
        using var run = new PolicyRun(model, prompts, DecodeSteps, CreateConfig(sequence));

        long[] next;
        using (var d = dense.Prefill())
        using (var p = run.Prefill())
        {
            AssertClose(d, p, dense.PrefillRealMask(), $"{name} prefill");
            next = PolicyRun.Argmax(d.select(1, d.shape[1] - 1));
        }
        for (int step = 0; step < DecodeSteps; step++)
        {
            using var d = dense.Decode(next);
            using var p = run.Decode(next);
            AssertClose(d, p, null, $"{name} decode step {step}");
            next = PolicyRun.Argmax(d);
        }
        Assert.Equal(dense.Cache.SequenceLengths, run.Cache.SequenceLengths);
        Assert.Equal(prompts.Select(p => p.Length + DecodeSteps), run.Cache.SequenceLengths);
    }

    void AssertClose(Tensor expected, Tensor actual, Tensor? realMask, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var scope = torch.NewDisposeScope();
        var diff = (expected - actual).abs();
        if (realMask is not null) diff = diff.masked_fill(realMask.logical_not().unsqueeze(-1), 0);
        Assert.False(actual.isnan().any().item<bool>(), $"{what}: NaN logits");
        double max = diff.max().item<float>();
        Assert.True(max <= Tolerance, $"{what}: max |Δlogit| against the dense cache = {max:E3} > {Tolerance:E1}");
    }

    // ---------------------------------------------------------------- (b) kept entries are what was appended

    [Theory]
    [MemberData(nameof(ContractModelsAndBudgets))]
    public void KeptEntriesAreBitIdenticalToWhatWasAppendedAndKeepTheirPositions(string name, bool tightBudget)
    {
        using var model = Load(name);
        var prompts = Prompts(model.Info.VocabSize);
        int sequence = prompts.Max(p => p.Length) + DecodeSteps;
        var config = CreateConfig(tightBudget ? TightBudget(sequence) : sequence);
        var recorder = RecordingPolicy.Wrap(config.Eviction);
        using var dense = new PolicyRun(model, prompts, DecodeSteps, KvCacheConfig.Full);
        using var run = new PolicyRun(model, prompts, DecodeSteps, config with { Eviction = recorder });

        long[] next;
        using (var d = dense.Prefill())
        using (run.Prefill())
            next = PolicyRun.Argmax(d.select(1, d.shape[1] - 1));
        CheckKept(run, recorder, dense, tightBudget, $"{name} prefill");
        for (int step = 0; step < DecodeSteps; step++)
        {
            using (var d = dense.Decode(next))
            using (run.Decode(next))
                next = PolicyRun.Argmax(d);
            CheckKept(run, recorder, dense, tightBudget, $"{name} step {step}");
        }
        // Every real token of every layer and KV head was appended exactly once, with its own position.
        int expected = model.Info.Layers * model.Info.KvHeads * prompts.Sum(p => p.Length + DecodeSteps);
        Assert.Equal(expected, recorder.Appended.Count);
    }

    /// <summary>Every occupied slot holds an entry that was appended (same bytes, same position), rows are in position order
    /// without duplicates, slots past Length are empty, and (layer 0 always; every layer with a full budget) the entry equals
    /// the dense run's entry of that position.</summary>
    void CheckKept(PolicyRun run, RecordingPolicy recorder, PolicyRun dense, bool tightBudget, string what)
    {
        var cache = run.Cache;
        for (int l = 0; l < cache.LayerCount; l++)
        {
            var layer = cache[l];
            var host = HostLayer.Read(layer);
            var reference = HostLayer.Read(dense.Cache[l]);
            var counts = HostArrays.Longs(layer.EntryCounts());
            // Caches that position tokens by cache index store keys unrotated (only values compare with the dense run), and
            // once they evict, learned position embeddings change even layer 0's entries.
            bool compareKeys = !layer.KeysAtCacheIndex;
            bool compareWithDense = !tightBudget || (l == 0 && !layer.KeysAtCacheIndex);
            double tolerance = l == 0 ? StorageTolerance : Math.Max(Tolerance, StorageTolerance);
            for (int b = 0; b < host.Batch; b++)
                for (int h = 0; h < host.Heads; h++)
                {
                    long last = -1;
                    var seen = new HashSet<long>();
                    int occupied = 0;
                    var denseSlots = reference.SlotsByPosition(b, h);
                    for (int slot = 0; slot < host.Capacity; slot++)
                    {
                        long p = host.Position(b, h, slot);
                        if (slot >= layer.Length)
                        {
                            Assert.True(p == -1, $"{what}: layer {l} row ({b},{h}) slot {slot} ≥ Length {layer.Length} holds position {p}");
                            continue;
                        }
                        if (p < 0) continue;
                        occupied++;
                        // Slot order is position order where attention reads it (keys at their cache index); elsewhere only
                        // duplicates are wrong (h2o's steady state writes into the slots it freed).
                        if (layer.KeysAtCacheIndex)
                            Assert.True(p > last, $"{what}: layer {l} row ({b},{h}) position {p} at slot {slot} follows position {last} (order or duplicate)");
                        else Assert.True(seen.Add(p), $"{what}: layer {l} row ({b},{h}) position {p} at slot {slot} twice");
                        last = p;
                        Assert.True(recorder.Appended.TryGetValue((l, b, h, p), out var appended),
                            $"{what}: layer {l} row ({b},{h}) slot {slot} holds position {p}, which was never appended there");
                        Assert.True(HostArrays.BitEqual(appended.Key, host.Key(b, h, slot)), $"{what}: layer {l} row ({b},{h}) key of position {p} changed since it was appended");
                        Assert.True(HostArrays.BitEqual(appended.Value, host.Value(b, h, slot)), $"{what}: layer {l} row ({b},{h}) value of position {p} changed since it was appended");
                        if (!compareWithDense) continue;
                        Assert.True(denseSlots.TryGetValue(p, out int denseSlot), $"{what}: layer {l} row ({b},{h}) position {p} is not in the dense cache");
                        double keyDiff = compareKeys ? HostArrays.MaxAbsDiff(reference.Key(b, h, denseSlot), host.Key(b, h, slot)) : 0;
                        double valueDiff = HostArrays.MaxAbsDiff(reference.Value(b, h, denseSlot), host.Value(b, h, slot));
                        Assert.True(keyDiff <= tolerance && valueDiff <= tolerance,
                            $"{what}: layer {l} row ({b},{h}) position {p}: |Δkey| {keyDiff:E2}, |Δvalue| {valueDiff:E2} against the dense cache (limit {tolerance:E1})");
                    }
                    Assert.True(counts[b * host.Heads + h] == occupied, $"{what}: layer {l} EntryCounts[{b},{h}] = {counts[b * host.Heads + h]}, {occupied} occupied slots");
                }
        }
    }

    // ---------------------------------------------------------------- (c) attention probabilities

    [Theory]
    [MemberData(nameof(ContractModelsAndBudgets))]
    public void AttentionProbabilitiesAreDistributionsOverOccupiedSlots(string name, bool tightBudget)
    {
        using var model = Load(name);
        var prompts = Prompts(model.Info.VocabSize);
        int sequence = prompts.Max(p => p.Length) + DecodeSteps;
        var config = CreateConfig(tightBudget ? TightBudget(sequence) : sequence);
        var recorder = RecordingPolicy.Wrap(config.Eviction);
        using var run = new PolicyRun(model, prompts, DecodeSteps, config with { Eviction = recorder });
        int layers = model.Info.Layers;

        int seen = 0;
        long[] next;
        using (var logits = run.Prefill())
            next = PolicyRun.Argmax(logits.select(1, logits.shape[1] - 1));
        CheckProbabilities(model, run, recorder, ref seen, $"{name} prefill");
        for (int step = 0; step < DecodeSteps; step++)
        {
            using (var logits = run.Decode(next))
                next = PolicyRun.Argmax(logits);
            CheckProbabilities(model, run, recorder, ref seen, $"{name} step {step}");
        }
        int forwards = DecodeSteps + 1;
        Assert.Equal(layers * forwards, recorder.BeforeAppendCalls);
        Assert.Equal(layers * forwards, recorder.AfterStepCalls);
        Assert.Equal(recorder is IAttentionObserver ? layers * forwards : 0, recorder.ObserveCalls);
    }

    static void CheckProbabilities(CausalLanguageModel model, PolicyRun run, RecordingPolicy recorder, ref int seen, string what)
    {
        var records = recorder.Probabilities.Skip(seen).ToArray();
        seen = recorder.Probabilities.Count;
        if (recorder is not IAttentionObserver)
        {
            Assert.Empty(records);
            return;
        }
        Assert.Equal(model.Info.Layers, records.Length);
        long[,] queries = run.QueryPositions;
        int batch = queries.GetLength(0), tokens = queries.GetLength(1);
        int heads = model.Info.Heads, kvHeads = model.Info.KvHeads, groups = heads / kvHeads;
        foreach (var r in records)
        {
            string at = $"{what} layer {r.Layer}";
            Assert.Equal(new long[] { batch, heads, tokens, r.Length }, r.Shape);
            Assert.Equal(ScalarType.Float32, r.DType);
            for (int b = 0; b < batch; b++)
                for (int h = 0; h < heads; h++)
                    for (int t = 0; t < tokens; t++)
                    {
                        long q = queries[b, t];
                        double sum = 0;
                        for (int l = 0; l < r.Length; l++)
                        {
                            float p = r.Values[((long)(b * heads + h) * tokens + t) * r.Length + l];
                            long k = r.KeyPositions[(b * kvHeads + h / groups) * r.Length + l];
                            Assert.True(float.IsFinite(p), $"{at}: probability ({b},{h},{t},{l}) is {p}");
                            if (k < 0)
                            {
                                Assert.True(p == 0, $"{at}: empty slot {l} of KV head {h / groups} gets probability {p} from query ({b},{h},{t})");
                                continue;
                            }
                            if (q < 0) continue; // a padding query: its row only has to be finite
                            Assert.True(p >= 0, $"{at}: negative probability {p}");
                            if (k > q) Assert.True(p == 0, $"{at}: query at position {q} attends to the future position {k} with {p}");
                            sum += p;
                        }
                        if (q >= 0)
                            Assert.True(Math.Abs(sum - 1) <= 1e-5, $"{at}: probabilities of query ({b},{h},{t}) at position {q} sum to {sum} over occupied slots");
                    }
        }
    }

    // ---------------------------------------------------------------- (d) capacity

    [Theory]
    [InlineData(40, 1)]
    [InlineData(40, 7)]
    [InlineData(64, 33)]
    [InlineData(5, 5)]
    public void CapacityOfAFullBudgetHoldsTheWholeSequence(int sequence, int step)
    {
        var policy = CreateConfig(sequence).Eviction;
        Assert.True(policy.Capacity(sequence, step) >= sequence,
            $"{policy.Name}: Capacity({sequence}, {step}) = {policy.Capacity(sequence, step)} cannot hold a sequence its budget covers");
    }

    /// <summary>Drives the policy's hooks as attention does, on a bare cache of exactly <see cref="IKvCachePolicy.Capacity"/>
    /// slots: prefill of <paramref name="first"/> tokens (the second sequence left-padded by 3), then steps of
    /// <paramref name="step"/> tokens until the longest sequence has <paramref name="sequence"/> tokens. Append throws if
    /// the policy let the cache overflow.</summary>
    [Theory]
    [InlineData(40, 1, 1, false)]
    [InlineData(40, 7, 1, false)]
    [InlineData(40, 5, 5, false)]
    [InlineData(40, 12, 3, false)]
    [InlineData(40, 1, 1, true)]
    [InlineData(40, 7, 1, true)]
    [InlineData(40, 5, 5, true)]
    [InlineData(40, 12, 3, true)]
    public void CapacityCoversWhatThePolicyNeeds(int sequence, int first, int step, bool tightBudget)
    {
        const int batch = 2, layers = 2, kvHeads = 2, groups = 2, dim = 4, pad = 3;
        var policy = CreateConfig(tightBudget ? TightBudget(sequence) : sequence).Eviction;
        int capacity = policy.Capacity(sequence, Math.Max(first, step));
        Assert.True(capacity >= 1, $"{policy.Name}: Capacity({sequence}, {Math.Max(first, step)}) = {capacity}");
        using var cache = KvCache.Create(new KvCacheOptions
        {
            BatchSize = batch, Layers = layers, KvHeads = kvHeads, HeadDim = dim, Capacity = capacity,
            DType = ScalarType.Float32, Device = torch.CPU,
        }, policy);
        int done = 0;
        var real = new int[batch];
        while (done < sequence)
        {
            int t = done == 0 ? first : Math.Min(step, sequence - done);
            using var scope = torch.NewDisposeScope();
            var positions = new long[batch * t];
            bool padding = false;
            for (int b = 0; b < batch; b++)
                for (int i = 0; i < t; i++)
                {
                    int slot = done + i;
                    bool isPad = b == 1 && slot < pad;
                    padding |= isPad;
                    positions[b * t + i] = isPad ? -1 : real[b]++;
                }
            var pos = torch.tensor(positions, new long[] { batch, t });
            for (int l = 0; l < layers; l++)
            {
                var layer = cache[l];
                var keys = torch.randn(batch, kvHeads, t, dim);
                layer.Update(keys, keys * 2, pos, padding); // the policy makes room, the cache appends where it says
                Assert.True(layer.Length <= layer.Capacity);
                if (policy is IAttentionObserver observer)
                {
                    var occupied = layer.ActivePositions.ge(0).to(ScalarType.Float32);
                    var p = (occupied / occupied.sum(-1, keepdim: true)).unsqueeze(2).unsqueeze(2)
                        .expand(batch, kvHeads, groups, t, layer.Length).reshape(batch, kvHeads * groups, t, layer.Length);
                    observer.ObserveAttention(layer, p);
                }
                policy.AfterStep(layer);
                Assert.True(layer.Length <= layer.Capacity);
            }
            cache.Advance(Enumerable.Repeat(t, batch).ToArray());
            done += t;
        }
    }
}

/// <summary>Runs a model step by step over a left-padded batch through a cache, as the generator does, with the tokens the
/// caller chooses (so two runs can be fed identical tokens).</summary>
internal sealed class PolicyRun : IDisposable
{
    readonly CausalLanguageModel model;
    readonly long[][] prompts;
    readonly int promptLength;
    int decoded;

    public PolicyRun(CausalLanguageModel model, IReadOnlyList<long[]> prompts, int decodeSteps, KvCacheConfig config)
    {
        this.model = model;
        this.prompts = prompts.ToArray();
        promptLength = prompts.Max(p => p.Length);
        Cache = model.CreateCache(prompts.Count, promptLength + decodeSteps, config, promptLength);
        QueryPositions = new long[0, 0];
    }

    public KvCache Cache { get; }

    /// <summary>Positions [batch, tokens] of the last step's queries (-1: padding).</summary>
    public long[,] QueryPositions { get; private set; }

    public int Batch => prompts.Length;

    /// <summary>[batch, tokens] bool: which prefill slots hold real tokens.</summary>
    public Tensor PrefillRealMask()
    {
        var mask = new bool[Batch * promptLength];
        for (int b = 0; b < Batch; b++)
            for (int t = 0; t < promptLength; t++) mask[b * promptLength + t] = t >= promptLength - prompts[b].Length;
        return torch.tensor(mask, new long[] { Batch, promptLength });
    }

    /// <summary>The prefill; logits of every position, [batch, tokens, vocab] fp32 on the CPU.</summary>
    public Tensor Prefill()
    {
        using var scope = torch.NewDisposeScope();
        var batch = ForwardBatch.LeftPadded(prompts.Select(p => (IReadOnlyList<int>)p.Select(x => (int)x).ToArray()).ToArray(), model.Device);
        var positions = batch.Positions.cpu().data<long>().ToArray();
        QueryPositions = new long[Batch, promptLength];
        for (int i = 0; i < Batch; i++)
            for (int t = 0; t < promptLength; t++) QueryPositions[i, t] = positions[i * promptLength + t];
        return model.Forward(batch, Cache).to(ScalarType.Float32).cpu().MoveToOuterDisposeScope();
    }

    /// <summary>One decode step feeding <paramref name="tokens"/>[b] to sequence b; logits [batch, vocab] fp32 on the CPU.</summary>
    public Tensor Decode(long[] tokens)
    {
        int b = Batch;
        var pos = new long[b];
        QueryPositions = new long[b, 1];
        for (int i = 0; i < b; i++) QueryPositions[i, 0] = pos[i] = prompts[i].Length + decoded;
        using var scope = torch.NewDisposeScope();
        var logits = model.Forward(new ForwardBatch
        {
            InputIds = torch.tensor(tokens, new long[] { b, 1 }).to(model.Device),
            Positions = torch.tensor(pos, new long[] { b, 1 }).to(model.Device),
            RealTokens = Enumerable.Repeat(1, b).ToArray(),
            MaxPosition = promptLength + decoded,
            LastPositionOnly = true,
        }, Cache);
        decoded++;
        return logits.to(ScalarType.Float32).cpu().MoveToOuterDisposeScope();
    }

    /// <summary>Arg-max of each row of [batch, vocab] logits.</summary>
    public static long[] Argmax(Tensor logits)
    {
        using var scope = torch.NewDisposeScope();
        return logits.argmax(-1).cpu().data<long>().ToArray();
    }

    public void Dispose() => Cache.Dispose();
}

/// <summary>One <see cref="IAttentionObserver.ObserveAttention"/> call: the probabilities and the layer's key positions then.</summary>
internal sealed record ProbabilityRecord(int Layer, long[] Shape, ScalarType DType, float[] Values, long[] KeyPositions, int Length);

/// <summary>
/// Wraps a policy, forwards every call, and records what it is handed: every appended entry (keys, values and position,
/// per layer, sequence and KV head, read right after the append and before the wrapped policy sees the step) and the
/// attention probabilities (the wrapper observes attention when the wrapped policy does: <see cref="Wrap"/>).
/// </summary>
internal class RecordingPolicy : IKvCachePolicy
{
    readonly IKvCachePolicy inner;
    readonly Dictionary<int, long[]> pending = new(); // a layer's slot positions before the step's append

    RecordingPolicy(IKvCachePolicy inner) => this.inner = inner;

    /// <summary>A recorder around <paramref name="inner"/>, itself an <see cref="IAttentionObserver"/> when the inner one is.</summary>
    public static RecordingPolicy Wrap(IKvCachePolicy inner) => inner is IAttentionObserver ? new Observing(inner) : new RecordingPolicy(inner);

    sealed class Observing(IKvCachePolicy inner) : RecordingPolicy(inner), IAttentionObserver
    {
        public void ObserveAttention(LayerKvCache layer, Tensor probabilities) => Record(layer, probabilities);
    }

    public IKvCachePolicy Inner => inner;
    public Dictionary<(int Layer, int Batch, int Head, long Position), (float[] Key, float[] Value)> Appended { get; } = new();
    public List<ProbabilityRecord> Probabilities { get; } = new();
    public int BeforeAppendCalls { get; private set; }
    public int ObserveCalls { get; private set; }
    public int AfterStepCalls { get; private set; }

    public string Name => inner.Name;
    public bool EvictsAfter(LayerKvCache layer, int incomingTokens) => inner.EvictsAfter(layer, incomingTokens);
    public bool FillsFreeSlots(LayerKvCache layer, int incomingTokens) => inner.FillsFreeSlots(layer, incomingTokens);
    public IKvCachePolicy ForSequenceLength(int maxSequenceLength) => inner.ForSequenceLength(maxSequenceLength);
    public bool AppendOnly => inner.AppendOnly;
    public int Capacity(int maxSequenceLength, int maxStepTokens) => inner.Capacity(maxSequenceLength, maxStepTokens);

    public void BeforeAppend(LayerKvCache layer, int incomingTokens)
    {
        BeforeAppendCalls++;
        inner.BeforeAppend(layer, incomingTokens);
        pending[layer.Layer] = HostArrays.Longs(layer.Positions);
    }

    void Record(LayerKvCache layer, Tensor probabilities)
    {
        ObserveCalls++;
        Capture(layer);
        Probabilities.Add(new ProbabilityRecord(layer.Layer, probabilities.shape.ToArray(), probabilities.dtype,
            HostArrays.Floats(probabilities), HostArrays.Longs(layer.ActivePositions), layer.Length));
        ((IAttentionObserver)inner).ObserveAttention(layer, probabilities);
    }

    public void AfterStep(LayerKvCache layer)
    {
        AfterStepCalls++;
        Capture(layer);
        inner.AfterStep(layer);
    }

    void Capture(LayerKvCache layer)
    {
        if (!pending.Remove(layer.Layer, out var before)) return;
        // What the step appended: slots free before it that hold an entry now (at the end, or freed slots the policy fills).
        var after = HostLayer.Read(layer);
        for (int b = 0; b < after.Batch; b++)
            for (int h = 0; h < after.Heads; h++)
                for (int slot = 0; slot < after.Capacity; slot++)
                {
                    int index = (b * after.Heads + h) * after.Capacity + slot;
                    long position = after.Positions[index];
                    if (before[index] >= 0 || position < 0) continue;
                    Assert.True(slot < layer.Length, $"layer {layer.Layer} row ({b},{h}): an entry appended at slot {slot}, past the length {layer.Length}");
                    Assert.True(Appended.TryAdd((layer.Layer, b, h, position), (after.Key(b, h, slot), after.Value(b, h, slot))),
                        $"layer {layer.Layer} row ({b},{h}): position {position} appended twice");
                }
    }
}

/// <summary>A host copy of one layer's whole storage (every slot up to the capacity).</summary>
internal sealed class HostLayer
{
    public int Batch, Heads, Capacity, Dim;
    public float[] Keys = [], Values = [];
    public long[] Positions = [];

    public static HostLayer Read(LayerKvCache layer) => new()
    {
        Batch = (int)layer.Keys.shape[0], Heads = (int)layer.Keys.shape[1], Capacity = (int)layer.Keys.shape[2], Dim = (int)layer.Keys.shape[3],
        Keys = HostArrays.Floats(layer.Keys), Values = HostArrays.Floats(layer.Values), Positions = HostArrays.Longs(layer.Positions),
    };

    public long Position(int b, int h, int slot) => Positions[(b * Heads + h) * Capacity + slot];
    public float[] Key(int b, int h, int slot) => Keys.AsSpan(((b * Heads + h) * Capacity + slot) * Dim, Dim).ToArray();
    public float[] Value(int b, int h, int slot) => Values.AsSpan(((b * Heads + h) * Capacity + slot) * Dim, Dim).ToArray();

    /// <summary>Occupied slots of row (b, h) by position.</summary>
    public Dictionary<long, int> SlotsByPosition(int b, int h)
    {
        var map = new Dictionary<long, int>();
        for (int s = 0; s < Capacity; s++)
            if (Position(b, h, s) is long p and >= 0) map[p] = s;
        return map;
    }
}

internal static class HostArrays
{
    public static float[] Floats(Tensor t)
    {
        using var scope = torch.NewDisposeScope();
        return t.detach().to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
    }

    public static long[] Longs(Tensor t)
    {
        using var scope = torch.NewDisposeScope();
        return t.detach().to(ScalarType.Int64).cpu().contiguous().data<long>().ToArray();
    }

    /// <summary>Same shape and the same bits in every element (fp32 view).</summary>
    public static bool BitEqual(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && BitEqual(Floats(a), Floats(b));

    public static bool BitEqual(float[] a, float[] b) =>
        a.Length == b.Length && a.Select(BitConverter.SingleToInt32Bits).SequenceEqual(b.Select(BitConverter.SingleToInt32Bits));

    public static double MaxAbsDiff(float[] a, float[] b)
    {
        Assert.Equal(a.Length, b.Length);
        double max = 0;
        for (int i = 0; i < a.Length; i++)
        {
            double d = Math.Abs((double)a[i] - b[i]);
            if (double.IsNaN(d)) return double.PositiveInfinity;
            max = Math.Max(max, d);
        }
        return max;
    }
}
