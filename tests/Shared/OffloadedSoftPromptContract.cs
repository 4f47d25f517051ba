using Tern.Generation;
using Generator = Tern.Generation.Generator;
using Tern.Models;
using Tern.Offloading;
using Tern.Prompting;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests;

/// <summary>A soft prompt on an offloaded model (each block's prefill runs the prompt alone over one row, stage by stage, and
/// every row starts from its entries) gives what the in-memory <see cref="PromptedModel"/> gives (the prompt's entries prefilled
/// once and copied): the same greedy tokens and, on the CPU as in <see cref="OffloadParityContract"/>, bit-identical logits, for
/// placements over the GPU tier, host memory and disk, with and without overlap and CPU attention. The GPU suite runs the same
/// contract on CUDA.</summary>
public abstract class OffloadedSoftPromptContract
{
    const int NewTokens = 5;

    /// <summary>The compute device (the GPU tier).</summary>
    protected abstract DeviceKind Device { get; }

    /// <summary>Largest |Δlogit| between the offloaded and the in-memory prompted model: 0 on the CPU; CUDA's kernels may reduce
    /// in another order over the offloaded cache's strides (as <see cref="OffloadParityContract"/>'s policy caches).</summary>
    protected virtual float Tolerance => 0f;

    ModelLoadOptions Load => new() { Device = Device };

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Six prompts of different lengths (left padding inside every GPU batch), reproducible.</summary>
    static IReadOnlyList<int>[] Prompts(int vocab)
    {
        var rng = new Random(7);
        return new[] { 5, 3, 7, 2, 6, 4 }.Select(n => (IReadOnlyList<int>)Enumerable.Range(0, n).Select(_ => rng.Next(3, vocab)).ToArray()).ToArray();
    }

    static SoftPrompt RandomPrompt(long width, int tokens) =>
        SoftPrompt.FromTensor(torch.randn(new long[] { tokens, width }, generator: new torch.Generator(11)));

    /// <summary>Greedy tokens and every step's logits ([rows, vocab], fp32 on the CPU) of <paramref name="prompts"/> through
    /// <paramref name="model"/>, <paramref name="rows"/> prompts per generation (the offloaded model's GPU batches, each padded
    /// to its own longest prompt).</summary>
    static (List<int[]> Tokens, List<Tensor> Logits) Generate(IStepModel model, IReadOnlyList<IReadOnlyList<int>> prompts, int rows,
        Tern.Caching.KvCacheConfig? cache = null)
    {
        var options = new GenerationOptions { MaxNewTokens = NewTokens, IgnoreEos = true, OutputLogits = true, Cache = cache };
        var tokens = new List<int[]>();
        var steps = Enumerable.Range(0, NewTokens).Select(_ => new List<Tensor>()).ToArray();
        for (int start = 0; start < prompts.Count; start += rows)
        {
            var result = new Generator(model).GenerateTokens(prompts.Skip(start).Take(rows).ToArray(), options, Ct);
            tokens.AddRange(result.Sequences.Select(s => s.Tokens.ToArray()));
            for (int i = 0; i < NewTokens; i++) steps[i].Add(result.Logits![i]);
        }
        var logits = steps.Select(s => torch.cat(s, 0).to(ScalarType.Float32).cpu()).ToList();
        foreach (var t in steps.SelectMany(s => s)) t.Dispose();
        return (tokens, logits);
    }

    /// <summary>Offloaded blocks of six prompts (several GPU batches padded each to its own longest prompt; one GPU batch of all
    /// six) against the in-memory prompted model over the same GPU batches: tokens and logits equal.</summary>
    [Theory]
    [InlineData("llama-gqa", "w=30/50/20,kv=34/33/33,act=0/50/50,gbs=2,ngb=3", 4)]
    [InlineData("llama-gqa", "w=0/100/0,kv=0/100/0,act=0/100/0,gbs=6,ngb=1,overlap=off", 3)]
    [InlineData("llama-gqa", "w=0/100/0,kv=0/100/0,act=0/100/0,gbs=3,ngb=2,cpu-attn=on", 4)]
    [InlineData("opt-prenorm", "w=0/0/100,kv=0/0/100,act=0/0/100,gbs=2,ngb=3", 4)]
    [InlineData("opt-postnorm-proj", "w=20/80/0,kv=50/50/0,act=0/100/0,gbs=3,ngb=2,overlap=off", 2)]
    [InlineData("gpt2", "w=40/30/30,kv=0/50/50,act=50/0/50,gbs=6,ngb=1", 4)]
    public void OffloadedSoftPromptEqualsTheInMemoryOne(string fixture, string policy, int promptTokens)
    {
        using var temp = new TempDir();
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), Load);
        using var offloaded = OffloadedModel.Load(Fixtures.ModelDir(fixture), Load, new OffloadOptions { Policy = OffloadPolicy.Parse(policy), Directory = temp.Path });
        Assert.Equal(model.TokenEmbeddingWidth, offloaded.TokenEmbeddingWidth);
        using var prompt = RandomPrompt(model.TokenEmbeddingWidth, promptTokens);
        using var inMemory = PromptedModel.Create(model, prompt);
        using var prompted = PromptedModel.Create(offloaded, prompt);
        Assert.Equal(inMemory.Info.MaxPositions, prompted.Info.MaxPositions);
        var prompts = Prompts(model.Info.VocabSize);
        var (expectedTokens, expectedLogits) = Generate(inMemory, prompts, offloaded.Policy.GpuBatchSize);
        var (tokens, logits) = Generate(prompted, prompts, offloaded.Policy.BlockSize);
        for (int i = 0; i < NewTokens; i++)
        {
            float diff = (expectedLogits[i] - logits[i]).abs().max().item<float>();
            Assert.True(diff <= Tolerance, $"step {i}: max |Δlogit| {diff}");
        }
        Assert.Equal(expectedTokens, tokens);
        // The prompt changes what is generated: the test would pass vacuously if it were dropped.
        var (plainTokens, plainLogits) = Generate(offloaded, prompts, offloaded.Policy.BlockSize);
        Assert.NotEqual(plainLogits[0].max().item<float>(), logits[0].max().item<float>());
        foreach (var t in expectedLogits.Concat(logits).Concat(plainLogits)) t.Dispose();

        // An empty prompt changes nothing.
        using var empty = SoftPrompt.FromTensor(torch.zeros(0, model.TokenEmbeddingWidth));
        using var unprompted = PromptedModel.Create(offloaded, empty);
        var (emptyTokens, emptyLogits) = Generate(unprompted, prompts, offloaded.Policy.BlockSize);
        Assert.Equal(plainTokens, emptyTokens);
        foreach (var t in emptyLogits) t.Dispose();
    }

    /// <summary>The offload policy's 4-bit cache (kvbits=4) holds the prompt's entries as the in-memory 4-bit cache does:
    /// equal to the in-memory prompted model under <c>--kv-bits 4</c>, bit for bit.</summary>
    [Fact]
    public void FourBitOffloadedCacheEqualsTheInMemoryFourBitCache()
    {
        using var temp = new TempDir();
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir("llama-gqa"), Load);
        using var offloaded = OffloadedModel.Load(Fixtures.ModelDir("llama-gqa"), Load,
            new OffloadOptions { Policy = OffloadPolicy.Parse("w=50/50/0,kv=0/50/50,act=0/100/0,gbs=2,ngb=3,kvbits=4"), Directory = temp.Path });
        using var prompt = RandomPrompt(model.TokenEmbeddingWidth, 4);
        using var inMemory = PromptedModel.Create(model, prompt);
        using var prompted = PromptedModel.Create(offloaded, prompt);
        var prompts = Prompts(model.Info.VocabSize);
        var (expectedTokens, expectedLogits) = Generate(inMemory, prompts, offloaded.Policy.GpuBatchSize, new Tern.Caching.KvCacheConfig(bits: 4));
        var (tokens, logits) = Generate(prompted, prompts, offloaded.Policy.BlockSize);
        for (int i = 0; i < NewTokens; i++) Assert.True((expectedLogits[i] - logits[i]).abs().max().item<float>() <= Tolerance);
        Assert.Equal(expectedTokens, tokens);
        foreach (var t in expectedLogits.Concat(logits)) t.Dispose();
    }

    /// <summary>KV policies and quantized caches compose with the offloaded prompt (each GPU batch's whole cache on the compute
    /// device, kv=100/0/0, or in host memory, kv=0/100/0; one GPU batch or two): the prompt's entries are what the policy keeps of
    /// the prompt alone, a first prefill chunk, and every row's prefill starts from them, as in the in-memory prompted model
    /// under the same configuration — tokens equal, logits bit for bit on the CPU. Cases where the prompt alone outgrows the
    /// budget (a rolling policy's text then starts at the kept count), ratio budgets (resolved for prompt + text; one GPU batch,
    /// so both sides resolve them for the same longest prompt), learned positions, amortised eviction, 8 and 4 bits.</summary>
    [Theory]
    [InlineData("llama-gqa", "h2o", "6", 16, "100/0/0", 7, 3)]     // the prompt alone overruns by one: evicted in place, compacted
    [InlineData("llama-gqa", "h2o", "0.5", 16, "0/100/0", 8, 6)]
    [InlineData("llama-gqa", "h2o", "6", 16, "0/100/0", 4, 3, 3)]   // steps between evictions send back only their entries
    [InlineData("qwen2", "h2o", "7", 4, "0/100/0", 5, 3)]
    [InlineData("llama-gqa", "sink", "6", 16, "100/0/0", 8, 3)]    // the prompt alone evicts down to the budget
    [InlineData("llama-gqa", "sink", "6", 8, "0/100/0", 3, 6)]
    [InlineData("gpt2", "sink", "6", 16, "0/100/0", 9, 3, 4)]
    [InlineData("opt-prenorm", "window", "5", 16, "0/100/0", 7, 3)]
    [InlineData("opt-prenorm", "window", "0.4", 16, "100/0/0", 4, 6)]
    [InlineData("llama-gqa", "full", null, 8, "100/0/0", 4, 3)]
    [InlineData("neox-parallel", "full", null, 4, "0/100/0", 5, 6)]
    public void KvPoliciesEqualTheInMemoryPromptedModel(string fixture, string policyName, string? budget, int bits, string cacheHome, int promptTokens, int gbs, int evictEvery = 1)
    {
        using var temp = new TempDir();
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), Load);
        using var offloaded = OffloadedModel.Load(Fixtures.ModelDir(fixture), Load,
            new OffloadOptions { Policy = OffloadPolicy.Parse($"w=0/50/50,kv={cacheHome},act=0/100/0,gbs={gbs},ngb={6 / gbs}"), Directory = temp.Path });
        var cache = OffloadParityContract.KvConfig(policyName, budget, bits, evictEvery);
        using var prompt = RandomPrompt(model.TokenEmbeddingWidth, promptTokens);
        using var inMemory = PromptedModel.Create(model, prompt);
        using var prompted = PromptedModel.Create(offloaded, prompt);
        var prompts = Prompts(model.Info.VocabSize);
        var (expectedTokens, expectedLogits) = Generate(inMemory, prompts, gbs, cache);
        var (tokens, logits) = Generate(prompted, prompts, offloaded.Policy.BlockSize, cache);
        for (int i = 0; i < NewTokens; i++)
        {
            float diff = (expectedLogits[i] - logits[i]).abs().max().item<float>();
            Assert.True(diff <= Tolerance, $"step {i}: max |Δlogit| {diff}");
        }
        Assert.Equal(expectedTokens, tokens);
        // The configuration changes what is computed: the test would pass vacuously if the block ran the full cache.
        var (_, fullLogits) = Generate(inMemory, prompts, gbs);
        Assert.NotEqual(0f, (fullLogits[^1] - logits[^1]).abs().max().item<float>());
        foreach (var t in expectedLogits.Concat(logits).Concat(fullLogits)) t.Dispose();
    }

    /// <summary>What still cannot run is refused as without a prompt: a KV policy over a cache split across tiers (it needs the
    /// whole cache on the GPU or in host memory, the message says so); a prompt of another width is refused as in memory.</summary>
    [Fact]
    public void SplitPolicyCachesAndOtherWidthsAreRefused()
    {
        using var offloaded = OffloadedModel.Load(Fixtures.ModelDir("llama-gqa"), Load,
            new OffloadOptions { Policy = OffloadPolicy.Parse("w=0/100/0,kv=50/50/0,act=0/100/0,gbs=2,ngb=1") });
        using var prompt = RandomPrompt(offloaded.TokenEmbeddingWidth, 3);
        using var prompted = PromptedModel.Create(offloaded, prompt);
        var window = Tern.Caching.KvCachePolicies.Create(new Tern.Caching.KvPolicyOptions { Policy = "window", Budget = Tern.Caching.KvBudget.Parse("8") });
        var refused = Assert.Throws<ArgumentException>(() => new Generator(prompted).GenerateTokens(Prompts(offloaded.Info.VocabSize).Take(2).ToArray(),
            new GenerationOptions { MaxNewTokens = 2, IgnoreEos = true, Cache = window }, Ct));
        Assert.Contains("kv=100/0/0", refused.Message);
        Assert.Contains("kv=0/100/0", refused.Message);

        using var wide = RandomPrompt(offloaded.TokenEmbeddingWidth + 1, 3);
        Assert.Contains("wide", Assert.Throws<OptionException>(() => PromptedModel.Create(offloaded, wide)).Message);
    }
}
