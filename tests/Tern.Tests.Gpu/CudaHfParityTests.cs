using Tern.Runtime;

namespace Tern.Tests.Gpu;

/// <summary>The HF parity contract on CUDA in fp32: same bounds as on the CPU (libtorch keeps TF32 off for matmuls by default).</summary>
public sealed class CudaFp32HfParityTests : HfParityContract
{
    protected override DeviceKind Device => DeviceKind.Cuda;
}

/// <summary>
/// The HF parity contract on CUDA in bf16 against the fp32 reference. bf16 keeps 8 significant bits (unit roundoff 2⁻⁹ ≈ 2e-3);
/// weights, activations and the KV cache are each rounded, over ~10 chained ops per layer, for logits of magnitude ≈ 1–3:
/// we accept max |Δlogit| ≤ 0.06. Greedy tokens are not compared: the fixtures' smallest top-1/top-2 margins (2e-3) lie below
/// what bf16 resolves.
/// </summary>
public sealed class CudaBf16HfParityTests : HfParityContract
{
    protected override DeviceKind Device => DeviceKind.Cuda;
    protected override ModelDType DType => ModelDType.BFloat16;
    protected override double Tolerance => 0.06;
    protected override bool CompareGreedyTokens => false;
}
