using Tern.Caching;

namespace Tern.Tests.Caching;

/// <summary>StreamingLLM with 4 sinks (cache-index positions, keys stored unrotated and rotated at use).</summary>
public sealed class SinkPolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) =>
        new(new StreamingPolicy(KvBudget.OfTokens(sequenceLength), sinks: 4), rollPositions: true);
}

/// <summary>Window attention: StreamingLLM without sinks.</summary>
public sealed class WindowPolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) =>
        new(new StreamingPolicy(KvBudget.OfTokens(sequenceLength), sinks: 0), rollPositions: true);
}

/// <summary>The cache of the re-computation baseline: the full cache (the generator re-runs windows through it).</summary>
public sealed class WindowRecomputePolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) =>
        KvCachePolicies.Create(new KvPolicyOptions { Policy = "window-recompute", Budget = KvBudget.OfTokens(sequenceLength) });

    protected override double Tolerance => 0;
}

/// <summary>H2O on the explicit attention path, half the budget recent.</summary>
public sealed class HeavyHitterPolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) => new(new HeavyHitterPolicy(KvBudget.OfTokens(sequenceLength)));

    protected override double Tolerance => 1e-5;
}

/// <summary>H2O ranking by normalised scores.</summary>
public sealed class NormalizedHeavyHitterPolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) =>
        new(new HeavyHitterPolicy(KvBudget.OfTokens(sequenceLength), KvBudget.OfTokens(Math.Max(1, sequenceLength / 4)), normalizeScores: true));

    protected override double Tolerance => 1e-5;
}

/// <summary>The full cache stored in 8 bits: logits within the quantization error of the dense run.</summary>
public sealed class Quantized8BitFullPolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) => new(bits: 8);

    protected override double Tolerance => 5e-2;

    protected override double StorageTolerance => 2e-2;
}

/// <summary>StreamingLLM over a 4-bit cache.</summary>
public sealed class Quantized4BitSinkPolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) =>
        new(new StreamingPolicy(KvBudget.OfTokens(sequenceLength), sinks: 4), bits: 4, rollPositions: true);

    protected override double Tolerance => 0.3;

    protected override double StorageTolerance => 0.3;
}

/// <summary>H2O over an 8-bit cache.</summary>
public sealed class Quantized8BitHeavyHitterPolicyContractTests : KvCachePolicyContract
{
    protected override KvCacheConfig CreateConfig(int sequenceLength) => new(new HeavyHitterPolicy(KvBudget.OfTokens(sequenceLength)), bits: 8);

    protected override double Tolerance => 5e-2;

    protected override double StorageTolerance => 2e-2;
}
