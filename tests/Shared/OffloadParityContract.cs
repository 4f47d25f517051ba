using Tern.Generation;
using Generator = Tern.Generation.Generator;
using Tern.Models;
using Tern.Offloading;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests;

/// <summary>
/// The offloaded block schedule against the plain runtime on the same device: identical logits and greedy tokens for every
/// placement (all on the compute device, all CPU, mixed, with disk), six architectures, overlap on and off; 4-bit weights
/// equal to the plain runtime on round-tripped weights; offload files gone afterwards. On a CPU-only machine the compute
/// device plays the GPU tier; the GPU suite runs the same contract on CUDA, where overlap uses the copy stream.
/// </summary>
public abstract class OffloadParityContract
{
    /// <summary>The compute device (the GPU tier).</summary>
    protected abstract DeviceKind Device { get; }

    ModelLoadOptions LoadOptions => new() { Device = Device };

    /// <summary>Largest |Δlogit| when decode attention is delegated to the CPU (fp32 there against the device's own kernels;
    /// on a CPU-only machine nothing is delegated and the logits stay identical).</summary>
    protected virtual float DelegatedAttentionTolerance => 0f;

    /// <summary>Largest |Δlogit| between 4-bit offloaded weights and the reference's round-tripped ones: 0 wherever both are
    /// quantized on the same device (on CUDA, 1.4e-6 was seen while offloaded weights were quantized on the host).</summary>
    protected virtual float CompressedWeightTolerance => 0f;

    /// <summary>Largest |Δlogit| between an offloaded KV policy and the plain runtime's: the offloaded cache is sized for decode
    /// (its prompt prefilled in a scratch), so attention reads the same entries through other strides; CPU kernels give the same
    /// bits, CUDA's may reduce in another order (≈5e-7 seen on an H200 for h2o and quantized caches).</summary>
    protected virtual float PolicyCacheTolerance => 0f;

    const int NewTokens = 4;

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Six prompts of different lengths (left padding inside every GPU batch), reproducible.</summary>
    static IReadOnlyList<int>[] Prompts(int vocab)
    {
        var rng = new Random(7);
        return new[] { 5, 3, 7, 2, 6, 4 }.Select(n => (IReadOnlyList<int>)Enumerable.Range(0, n).Select(_ => rng.Next(3, vocab)).ToArray()).ToArray();
    }

    /// <summary>The plain runtime over the same GPU batches: prefill, then greedy decode steps; logits per step [rows, vocab].</summary>
    static (List<Tensor> Logits, List<List<int>> Tokens) Reference(CausalLanguageModel model, IReadOnlyList<IReadOnlyList<int>> prompts, int gbs,
        Tern.Caching.KvCacheConfig? cacheConfig = null)
    {
        var steps = Enumerable.Range(0, NewTokens).Select(_ => new List<Tensor>()).ToArray();
        var tokens = new List<List<int>>();
        using var noGrad = torch.no_grad();
        for (int start = 0; start < prompts.Count; start += gbs)
        {
            var batch = prompts.Skip(start).Take(gbs).ToArray();
            using var scope = torch.NewDisposeScope();
            using var cache = model.CreateCache(batch.Length, batch.Max(p => p.Count) + NewTokens, cacheConfig);
            var logits = model.Forward(ForwardBatch.LeftPadded(batch, model.Device, lastPositionOnly: true), cache);
            var rows = batch.Select(_ => new List<int>()).ToList();
            for (int i = 0; ; i++)
            {
                steps[i].Add(logits.to(ScalarType.Float32).cpu().DetachFromDisposeScope());
                var next = logits.argmax(-1);
                var host = next.cpu().data<long>().ToArray();
                for (int r = 0; r < rows.Count; r++) rows[r].Add((int)host[r]);
                if (i + 1 == NewTokens) break;
                logits = model.Forward(new ForwardBatch
                {
                    InputIds = next.unsqueeze(1),
                    Positions = torch.tensor(batch.Select(p => (long)(p.Count + i)).ToArray(), new long[] { batch.Length, 1 }).to(model.Device),
                    RealTokens = Enumerable.Repeat(1, batch.Length).ToArray(),
                    MaxPosition = batch.Max(p => p.Count) + i,
                    LastPositionOnly = true,
                }, cache);
            }
            tokens.AddRange(rows);
        }
        return (steps.Select(s => torch.cat(s, 0)).ToList(), tokens);
    }

    OffloadedGeneration RunOffloaded(string fixture, string policy, string? dir, out string? offloadPath)
    {
        using var offloaded = OffloadedModel.Load(Fixtures.ModelDir(fixture), LoadOptions,
            new OffloadOptions { Policy = OffloadPolicy.Parse(policy), Directory = dir });
        offloadPath = offloaded.OffloadPath;
        var p = OffloadPolicy.Parse(policy);
        if (p.Weights.Disk > 0) Assert.NotEmpty(Directory.GetFiles(offloadPath!)); // the disk tier is really used
        return offloaded.Generate(Prompts(offloaded.Info.VocabSize), NewTokens, keepLogits: true);
    }

    static float MaxDiff(Tensor a, Tensor b)
    {
        Assert.Equal(a.shape, b.shape);
        return (a - b).abs().max().item<float>();
    }

    public static TheoryData<string, string> Cases => new()
    {
        { "llama-gqa", "w=100/0/0,kv=100/0/0,act=100/0/0,gbs=2,ngb=3" },
        { "llama-gqa", "w=0/100/0,kv=0/100/0,act=0/100/0,gbs=2,ngb=3,overlap=off" },
        { "llama-gqa", "w=30/50/20,kv=34/33/33,act=0/50/50,gbs=3,ngb=2" },
        { "opt-prenorm", "w=0/0/100,kv=0/0/100,act=0/0/100,gbs=2,ngb=3" },
        { "opt-postnorm-proj", "w=20/80/0,kv=50/50/0,act=0/100/0,gbs=6,ngb=1,overlap=off" },
        { "gpt2", "w=40/30/30,kv=0/50/50,act=50/0/50,gbs=1,ngb=4" },
        { "neox-parallel", "w=0/100/0,kv=0/0/100,act=0/100/0,gbs=2,ngb=2" },
        { "qwen2", "w=50/0/50,kv=100/0/0,act=0/0/100,gbs=4,ngb=2,overlap=off" },
        { "llama-gqa", "w=0/100/0,kv=0/100/0,act=0/100/0,gbs=2,ngb=3,cpu-attn=on" },
        { "opt-prenorm", "w=30/70/0,kv=0/100/0,act=100/0/0,gbs=3,ngb=2,cpu-attn=on,overlap=off" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void LogitsAndTokensEqualThePlainRuntime(string fixture, string policy)
    {
        using var temp = new TempDir();
        string parent = temp.Path;
        var generation = RunOffloaded(fixture, policy, parent, out string? path);
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), LoadOptions);
        var prompts = Prompts(model.Info.VocabSize);
        var parsed = OffloadPolicy.Parse(policy);
        var (logits, tokens) = Reference(model, prompts, parsed.GpuBatchSize);
        float tolerance = parsed.CpuAttention ? DelegatedAttentionTolerance : 0f;
        for (int i = 0; i < NewTokens; i++)
            Assert.True(MaxDiff(logits[i], generation.Logits![i]) <= tolerance, $"step {i}: max |Δ| {MaxDiff(logits[i], generation.Logits[i])}");
        Assert.Equal(tokens.Select(t => t.ToArray()), generation.Tokens.Select(t => t.ToArray()));
        if (path is not null) Assert.False(Directory.Exists(path), "offload files must be removed when the model is disposed");
        Assert.Empty(Directory.GetFileSystemEntries(parent));
    }

    /// <summary>The generation loop is the same for an offloaded model: seeded sampling, stop tokens and streaming give what
    /// the plain <see cref="Generator"/> gives (one GPU batch, so both pad the prompts alike and the logits are identical).</summary>
    [Theory]
    [InlineData("llama-gqa", "w=0/100/0,kv=0/100/0,act=0/100/0,gbs=6,ngb=1")]
    [InlineData("opt-prenorm", "w=30/50/20,kv=34/33/33,act=0/50/50,gbs=6,ngb=1,overlap=off")]
    public async Task SamplingStopsAndStreamingEqualThePlainGenerator(string fixture, string policy)
    {
        using var temp = new TempDir();
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), LoadOptions);
        using var offloaded = OffloadedModel.Load(Fixtures.ModelDir(fixture), LoadOptions,
            new OffloadOptions { Policy = OffloadPolicy.Parse(policy), Directory = temp.Path });
        var prompts = Prompts(model.Info.VocabSize);
        var sampling = new GenerationOptions { MaxNewTokens = 6, Temperature = 0.9, TopK = 20, Seed = 3, IgnoreEos = true, OutputLogits = true };
        var plain = new Generator(model).GenerateTokens(prompts, sampling, Ct);
        var other = new Generator(offloaded).GenerateTokens(prompts, sampling, Ct);
        for (int i = 0; i < plain.Logits!.Count; i++) Assert.Equal(0f, MaxDiff(plain.Logits[i], other.Logits![i]));
        Assert.Equal(plain.Sequences.Select(q => q.Tokens.ToArray()), other.Sequences.Select(q => q.Tokens.ToArray()));

        // A stop token that sequence 0 samples at its third step ends it there, in both.
        var stopping = sampling with { OutputLogits = false, StopTokenIds = new[] { plain.Sequences[0].Tokens[2] } };
        var expected = new List<GeneratedToken>();
        await foreach (var t in new Generator(model).StreamAsync(prompts, stopping, Ct)) expected.Add(t);
        var streamed = new List<GeneratedToken>();
        await foreach (var t in new Generator(offloaded).StreamAsync(prompts, stopping, Ct)) streamed.Add(t);
        Assert.Equal(expected, streamed);
        Assert.True(streamed.Count(t => t.Sequence == 0) <= 3, "sequence 0 stops at its stop token");
        foreach (var t in plain.Logits.Concat(other.Logits!)) t.Dispose();
    }

    /// <summary>KV policies compose with offloading (weights on the CPU and disk; each batch's cache resident on the compute
    /// device, or in host memory and copied to the device a layer at a time): h2o, sink, window and a quantized full cache give
    /// the plain <see cref="Generator"/>'s logits and tokens; a cache split over tiers is refused with the reason.</summary>
    [Theory]
    [InlineData("llama-gqa", "h2o", "0.5", 16, "100/0/0")]
    [InlineData("llama-gqa", "h2o", "0.5", 16, "0/100/0")]
    [InlineData("llama-gqa", "sink", "6", 16, "100/0/0")]
    [InlineData("gpt2", "sink", "6", 16, "0/100/0")]
    [InlineData("opt-prenorm", "window", "5", 16, "0/100/0")]
    [InlineData("neox-parallel", "full", null, 8, "100/0/0")]
    [InlineData("qwen2", "h2o", "7", 4, "0/100/0")]
    [InlineData("llama-gqa", "h2o", "0.5", 16, "0/100/0", 3)]  // steps between evictions send back only their entries
    [InlineData("gpt2", "sink", "6", 16, "0/100/0", 4)]
    public void KvPoliciesEqualThePlainGenerator(string fixture, string policyName, string? budget, int bits, string cacheHome, int evictEvery = 1)
    {
        using var temp = new TempDir();
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), LoadOptions);
        using var offloaded = OffloadedModel.Load(Fixtures.ModelDir(fixture), LoadOptions,
            new OffloadOptions { Policy = OffloadPolicy.Parse($"w=0/50/50,kv={cacheHome},act=0/100/0,gbs=6,ngb=1"), Directory = temp.Path });
        var policy = KvConfig(policyName, budget, bits, evictEvery);
        var prompts = Prompts(model.Info.VocabSize);
        var options = new GenerationOptions { MaxNewTokens = 8, IgnoreEos = true, OutputLogits = true, Cache = policy };
        var plain = new Generator(model).GenerateTokens(prompts, options, Ct);
        var other = new Generator(offloaded).GenerateTokens(prompts, options, Ct);
        for (int i = 0; i < plain.Logits!.Count; i++) Assert.InRange(MaxDiff(plain.Logits[i], other.Logits![i]), 0f, PolicyCacheTolerance);
        Assert.Equal(plain.Sequences.Select(q => q.Tokens.ToArray()), other.Sequences.Select(q => q.Tokens.ToArray()));
        foreach (var t in plain.Logits.Concat(other.Logits!)) t.Dispose();

        using var travelling = OffloadedModel.Load(Fixtures.ModelDir(fixture), LoadOptions,
            new OffloadOptions { Policy = OffloadPolicy.Parse("w=0/100/0,kv=50/50/0,act=0/100/0,gbs=6,ngb=1") });
        var refused = Assert.Throws<ArgumentException>(() => new Generator(travelling).GenerateTokens(prompts, options, Ct));
        Assert.Contains("kv=0/100/0", refused.Message);
    }

    /// <summary>The KV cache configuration the policy cases name (two sinks for a sink).</summary>
    internal static Tern.Caching.KvCacheConfig KvConfig(string policyName, string? budget, int bits, int evictEvery) =>
        Tern.Caching.KvCachePolicies.Create(new Tern.Caching.KvPolicyOptions
        {
            Policy = policyName, Budget = budget is null ? null : Tern.Caching.KvBudget.Parse(budget), Sinks = policyName == "sink" ? 2 : null, Bits = bits,
            EvictEvery = evictEvery,
        });

    [Fact]
    public void OverlapOnAndOffAgreeBitForBit()
    {
        using var temp = new TempDir();
        string parent = temp.Path;
        const string mixed = "w=30/40/30,kv=25/50/25,act=0/50/50,gbs=2,ngb=3";
        var on = RunOffloaded("llama-gqa", mixed, parent, out _);
        var off = RunOffloaded("llama-gqa", mixed + ",overlap=off", parent, out _);
        for (int i = 0; i < NewTokens; i++) Assert.Equal(0f, MaxDiff(on.Logits![i], off.Logits![i]));
    }

    /// <summary>4-bit KV cache: the offloaded codes are the plain runtime's 4-bit cache (the KV-policy issue's quantizer), moved
    /// between tiers as codes, so the logits equal the plain runtime with <c>--kv-bits 4</c> bit for bit, wherever the codes live.</summary>
    [Theory]
    [InlineData("llama-gqa", "w=50/50/0,kv=0/50/50,act=0/100/0,gbs=2,ngb=3,kvbits=4")]
    [InlineData("opt-prenorm", "kv=100/0/0,gbs=3,ngb=2,kvbits=4,overlap=off")]
    public void FourBitCacheEqualsThePlainRuntimeWithAFourBitCache(string fixture, string policy)
    {
        using var temp = new TempDir();
        var compressed = RunOffloaded(fixture, policy, temp.Path, out _);
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), LoadOptions);
        var prompts = Prompts(model.Info.VocabSize);
        int gbs = OffloadPolicy.Parse(policy).GpuBatchSize;
        var (quantized, tokens) = Reference(model, prompts, gbs, new Tern.Caching.KvCacheConfig(bits: 4));
        var (exact, _) = Reference(model, prompts, gbs);
        for (int i = 0; i < NewTokens; i++) Assert.Equal(0f, MaxDiff(quantized[i], compressed.Logits![i]));
        Assert.Equal(tokens.Select(t => t.ToArray()), compressed.Tokens.Select(t => t.ToArray()));
        Assert.True(MaxDiff(exact[1], compressed.Logits![1]) > 1e-5, "the 4-bit cache must change the decode logits");
    }

    /// <summary>4-bit weights: the engine computes exactly what the plain runtime computes with every matrix replaced by its
    /// quantize → dequantize round trip (so compression is on, and nothing else moves), and each weight it computes with is
    /// within half a quantization step of the original (the quantizer's bound).</summary>
    [Fact]
    public void FourBitWeightsEqualThePlainRuntimeOnRoundTrippedWeights()
    {
        const string policy = "w=20/80/0,gbs=3,ngb=2,wbits=4";
        var compressed = RunOffloaded("llama-gqa", policy, null, out _);
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir("llama-gqa"), LoadOptions);
        var prompts = Prompts(model.Info.VocabSize);
        var (exact, _) = Reference(model, prompts, 3);
        var seen = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        using (torch.no_grad())
            foreach (var w in model.Parts.SelectMany(p => p.Tensors))
            {
                if (w.dim() < 2 || !seen.Add(w)) continue;
                using var scope = torch.NewDisposeScope();
                using var q = Tern.Compression.GroupQuantizer.Quantize(w, OffloadedWeights.Compression);
                var restored = Tern.Compression.GroupQuantizer.Dequantize(q);
                // Half a step per group of 64 along dim 0, the step broadcast back to the weight's layout.
                var step = q.Step.expand(q.Step.shape[0], q.Step.shape[1], 64).reshape(q.Step.shape[0], -1).narrow(1, 0, w.shape[0]).t();
                Assert.True((restored - w).abs().le(step * 0.5 + 1e-6).all().item<bool>());
                w.copy_(restored);
            }
        var (roundTripped, tokens) = Reference(model, prompts, 3);
        for (int i = 0; i < NewTokens; i++) Assert.InRange(MaxDiff(roundTripped[i], compressed.Logits![i]), 0f, CompressedWeightTolerance);
        Assert.Equal(tokens.Select(t => t.ToArray()), compressed.Tokens.Select(t => t.ToArray()));
        Assert.True(MaxDiff(exact[0], compressed.Logits![0]) > 1e-4, "4-bit weights must change the logits");
    }
}
