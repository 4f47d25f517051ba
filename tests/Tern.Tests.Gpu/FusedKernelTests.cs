using Tern.Interop;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Tests.Gpu;

/// <summary>The NVRTC kernels compile on this GPU and agree with the composite TorchSharp ops they replace.</summary>
public sealed class FusedKernelTests
{
    public FusedKernelTests() => ComputeOptions.ResolveDevice(DeviceKind.Cuda);

    public static TheoryData<ModelDType> DTypes => new() { ModelDType.Float32, ModelDType.BFloat16, ModelDType.Float16 };

    static void AssertClose(Tensor expected, Tensor actual, ModelDType dtype, string what)
    {
        using var scope = torch.NewDisposeScope();
        var e = expected.to(ScalarType.Float32).cpu();
        var a = actual.to(ScalarType.Float32).cpu();
        // one rounding of the element type, relative, plus a small absolute floor
        double rel = dtype == ModelDType.Float32 ? 1e-5 : dtype == ModelDType.BFloat16 ? 1.0 / 64 : 1.0 / 512;
        var excess = ((a - e).abs() - (e.abs() * rel + rel)).max().item<float>();
        Assert.True(excess <= 0, $"{what} {dtype}: max |Δ| exceeds the bound by {excess}");
    }

    [Fact]
    public void KernelsCompile() => Assert.True(FusedKernels.Available, FusedKernels.UnavailableReason);

    [Theory]
    [MemberData(nameof(DTypes))]
    public void RmsNormMatchesComposite(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var t = dtype.ToScalarType();
        var x = torch.randn(3, 5, 4096, device: CUDA).to(t);
        var w = (torch.rand(4096, device: CUDA) + 0.5).to(t);
        Assert.True(FusedKernels.TryRmsNorm(x, w, 1e-6, out var fused));
        var xf = x.to(ScalarType.Float32);
        var reference = (xf * (xf.square().mean(new long[] { -1 }, keepdim: true) + 1e-6).rsqrt()).to(t) * w;
        AssertClose(reference, fused, dtype, "rms_norm");
    }

    [Theory]
    [MemberData(nameof(DTypes))]
    public void GatedActivationMatchesComposite(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var t = dtype.ToScalarType();
        var gu = torch.randn(2, 3, 2 * 700, device: CUDA).to(t);
        foreach (var (kind, act) in new (int, Func<Tensor, Tensor>)[] { (0, x => F.silu(x)), (1, x => F.relu(x)), (2, x => F.gelu(x)), (3, x => F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh)) })
        {
            Assert.True(FusedKernels.TryGated(gu, 700, kind, out var fused));
            AssertClose(act(gu.narrow(-1, 0, 700)) * gu.narrow(-1, 700, 700), fused, dtype, $"gated kind {kind}");
        }
    }

    public static TheoryData<ModelDType, int, int> GemvShapes => new()
    {
        { ModelDType.BFloat16, 1000, 4096 }, { ModelDType.BFloat16, 333, 11008 }, { ModelDType.Float16, 1000, 4096 }, { ModelDType.Float16, 77, 520 },
    };

    [Theory]
    [MemberData(nameof(GemvShapes))]
    public void OneRowGemvMatchesLinear(ModelDType dtype, int n, int k)
    {
        using var scope = torch.NewDisposeScope();
        var t = dtype.ToScalarType();
        var x = torch.randn(1, 1, k, device: CUDA).to(t);
        var w = (torch.randn(n, k, device: CUDA) * 0.05).to(t);
        var b = torch.randn(n, device: CUDA).to(t);
        var r = torch.randn(1, 1, n, device: CUDA).to(t);
        Assert.True(FusedKernels.TryGemv(x, w, null, null, out var plain));
        Assert.True(FusedKernels.TryGemv(x, w, b, r, out var full));
        Assert.Equal(new long[] { 1, 1, n }, plain.shape);
        AssertClose(F.linear(x, w), plain, dtype, "gemv");
        AssertClose(r + F.linear(x, w, b), full, dtype, "gemv + bias + residual");
        Assert.False(FusedKernels.TryGemv(torch.randn(2, k, device: CUDA).to(t), w, null, null, out _)); // more rows: cuBLAS
    }
}
