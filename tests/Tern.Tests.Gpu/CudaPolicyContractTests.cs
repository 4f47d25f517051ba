using Tern.Caching;
using Tern.Runtime;

namespace Tern.Tests.Gpu;

// The KV-policy contract (tests/Shared/KvCachePolicyContract.cs) on CUDA: dense equivalence when the budget covers the
// sequence, kept entries bit-identical with their positions, probabilities that are distributions, room for every step.

public sealed class CudaSinkPolicyContractTests : KvCachePolicyContract
{
    protected override DeviceKind Device => DeviceKind.Cuda;
    protected override double Tolerance => 1e-5;
    protected override KvCacheConfig CreateConfig(int sequenceLength) =>
        new(new StreamingPolicy(KvBudget.OfTokens(sequenceLength), sinks: 4), rollPositions: true);
}

public sealed class CudaWindowPolicyContractTests : KvCachePolicyContract
{
    protected override DeviceKind Device => DeviceKind.Cuda;
    protected override double Tolerance => 1e-5;
    protected override KvCacheConfig CreateConfig(int sequenceLength) =>
        new(new StreamingPolicy(KvBudget.OfTokens(sequenceLength), sinks: 0), rollPositions: true);
}

public sealed class CudaHeavyHitterPolicyContractTests : KvCachePolicyContract
{
    protected override DeviceKind Device => DeviceKind.Cuda;
    protected override double Tolerance => 1e-5;
    protected override KvCacheConfig CreateConfig(int sequenceLength) => new(new HeavyHitterPolicy(KvBudget.OfTokens(sequenceLength)));
}

public sealed class CudaQuantized4BitHeavyHitterPolicyContractTests : KvCachePolicyContract
{
    protected override DeviceKind Device => DeviceKind.Cuda;
    protected override double Tolerance => 0.3;
    protected override double StorageTolerance => 0.3;
    protected override KvCacheConfig CreateConfig(int sequenceLength) => new(new HeavyHitterPolicy(KvBudget.OfTokens(sequenceLength)), bits: 4);
}
