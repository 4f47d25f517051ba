using Tern.Caching;
using Tern.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Caching;

/// <summary>The policy contract on the full cache (fused SDPA paths).</summary>
public sealed class DensePolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) => KvCacheConfig.Full;

    /// <summary>The full cache against itself: bit-identical.</summary>
    protected override double Tolerance => 0;
}

/// <summary>
/// The policy contract on a policy that keeps everything but asks for attention probabilities: the model then takes the
/// explicit softmax(q·kᵀ/√d)·v path (the one H2O uses), which must give the logits of the fused SDPA path.
/// </summary>
public sealed class ProbabilityRecordingDensePolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) => new(new ProbabilityRecordingDensePolicy());

    protected override double Tolerance => 1e-5;
}

/// <summary>Keeps everything, like <see cref="DensePolicy"/>, but needs the attention probabilities (and counts them).</summary>
internal sealed class ProbabilityRecordingDensePolicy : IKvCachePolicy, IAttentionObserver
{
    public int Observed { get; private set; }
    public string Name => "full+probabilities";
    public bool AppendOnly => true;
    public int Capacity(int maxSequenceLength, int maxStepTokens) => DensePolicy.Instance.Capacity(maxSequenceLength, maxStepTokens);
    public void BeforeAppend(LayerKvCache layer, int incomingTokens) => DensePolicy.Instance.BeforeAppend(layer, incomingTokens);
    public void ObserveAttention(LayerKvCache layer, Tensor probabilities) => Observed++;
    public void AfterStep(LayerKvCache layer) { }
}

public sealed class DensePolicyTests
{
    [Fact]
    public void DescribesItselfAsTheFullCache()
    {
        IKvCachePolicy policy = DensePolicy.Instance;
        Assert.Equal("full", policy.Name);
        Assert.False(policy is IAttentionObserver);
        Assert.Equal(37, policy.Capacity(37, 1));
        Assert.Equal(37, policy.Capacity(37, 37));
        Assert.Same(DensePolicy.Instance, DensePolicy.Instance);
    }

    [Fact]
    public void RefusesToOverflowInsteadOfEvicting()
    {
        using var cache = KvCache.Create(new KvCacheOptions
        {
            BatchSize = 1, Layers = 2, KvHeads = 1, HeadDim = 2, Capacity = 4, DType = ScalarType.Float32, Device = torch.CPU,
        });
        Assert.Same(DensePolicy.Instance, cache.Policy);
        var layer = cache[1];
        using var kv = torch.ones(1, 1, 3, 2);
        using var pos = torch.tensor(new long[] { 0, 1, 2 }, new long[] { 1, 3 });
        cache.Policy.BeforeAppend(layer, 3);
        layer.Append(kv, kv, pos, false);
        cache.Policy.BeforeAppend(layer, 1); // exactly full: allowed
        var ex = Assert.Throws<InvalidOperationException>(() => cache.Policy.BeforeAppend(layer, 2));
        Assert.Contains("layer 1", ex.Message);
        Assert.Contains("never evicts", ex.Message);
        Assert.Equal(3, layer.Length);
    }

    /// <summary>The explicit attention path (probabilities materialised) against the fused path and against transformers,
    /// on every fixture: prefill of the reference's padded batch, then its greedy continuation fed token by token.</summary>
    [Theory]
    [MemberData(nameof(HfParityContract.FixtureModels), MemberType = typeof(HfParityContract))]
    public void ExplicitAttentionPathMatchesTheFusedPathAndTransformers(string name)
    {
        using var model = HfParityContract.LoadFixture(name);
        using var reference = HfParityContract.Reference.Load(Fixtures.ModelDir(name));
        var prompts = reference.Prompts;
        int steps = reference.NewTokens - 1;
        var policy = new ProbabilityRecordingDensePolicy();
        using var fused = new PolicyRun(model, prompts, steps, KvCacheConfig.Full);
        using var explicitRun = new PolicyRun(model, prompts, steps, new KvCacheConfig(policy));

        using (var f = fused.Prefill())
        using (var e = explicitRun.Prefill())
        using (var real = reference.PaddedMask.to(ScalarType.Bool).unsqueeze(-1))
        {
            var hidden = real.logical_not();
            double diff = HfParityContract.MaxAbsDiff(f.masked_fill(hidden, 0), e.masked_fill(hidden, 0));
            Assert.True(diff <= 1e-5, $"{name} prefill: explicit vs fused max |Δlogit| = {diff:E2}");
            double hf = HfParityContract.MaxAbsDiff(e.masked_fill(hidden, 0), reference.PaddedLogits.masked_fill(hidden, 0));
            Assert.True(hf <= 1e-4, $"{name} prefill: explicit path vs transformers max |Δlogit| = {hf:E2}");
        }
        for (int s = 0; s < steps; s++)
        {
            var next = reference.PaddedGreedy.Select(g => g[s]).ToArray();
            using var f = fused.Decode(next);
            using var e = explicitRun.Decode(next);
            double diff = HfParityContract.MaxAbsDiff(f, e);
            Assert.True(diff <= 1e-5, $"{name} step {s}: explicit vs fused max |Δlogit| = {diff:E2}");
            Assert.Equal(PolicyRun.Argmax(e), reference.PaddedGreedy.Select(g => g[s + 1]).ToArray());
        }
        Assert.Equal(model.Info.Layers * (steps + 1), policy.Observed);
    }
}
