using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Runtime;

/// <summary>TorchSharp loads (through the patched libLibTorchSharp.so where needed) and computes.</summary>
public sealed class TorchSharpTests
{
    [Fact]
    public void AMatmulEqualsTheHandComputation()
    {
        const int n = 64;
        // Small integers: every product and sum is exact in fp32, so the result must match exactly.
        var a = new float[n * n];
        var b = new float[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                a[i * n + j] = (i * 7 + j * 3) % 11 - 5;
                b[i * n + j] = (i * 5 + j * 13) % 9 - 4;
            }
        var expected = new float[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                float sum = 0;
                for (int k = 0; k < n; k++) sum += a[i * n + k] * b[k * n + j];
                expected[i * n + j] = sum;
            }
        using var scope = torch.NewDisposeScope();
        var product = torch.tensor(a, new long[] { n, n }).matmul(torch.tensor(b, new long[] { n, n }));
        Assert.Equal(new long[] { n, n }, product.shape);
        Assert.Equal(ScalarType.Float32, product.dtype);
        Assert.Equal(expected, product.data<float>().ToArray());
    }
}

public sealed class ComputeOptionsTests
{
    [Theory]
    [InlineData("fp32", ModelDType.Float32)]
    [InlineData("float32", ModelDType.Float32)]
    [InlineData("f32", ModelDType.Float32)]
    [InlineData("float", ModelDType.Float32)]
    [InlineData("FP32", ModelDType.Float32)]
    [InlineData(" bf16 ", ModelDType.BFloat16)]
    [InlineData("bfloat16", ModelDType.BFloat16)]
    [InlineData("BF16", ModelDType.BFloat16)]
    [InlineData("fp16", ModelDType.Float16)]
    [InlineData("float16", ModelDType.Float16)]
    [InlineData("f16", ModelDType.Float16)]
    [InlineData("half", ModelDType.Float16)]
    public void ParseDTypeAcceptsTheDocumentedSpellings(string text, ModelDType expected)
    {
        Assert.Equal(expected, ComputeOptions.ParseDType(text));
    }

    [Theory]
    [InlineData("fp8")]
    [InlineData("int8")]
    [InlineData("")]
    [InlineData("bf32")]
    [InlineData("double")]
    public void ParseDTypeRejectsOthersNamingTheChoices(string text)
    {
        var ex = Assert.Throws<ArgumentException>(() => ComputeOptions.ParseDType(text));
        Assert.Contains($"'{text}'", ex.Message);
        foreach (string choice in new[] { "fp32", "bf16", "fp16" }) Assert.Contains(choice, ex.Message);
    }

    [Theory]
    [InlineData(ModelDType.Float32, "fp32", ScalarType.Float32, 4)]
    [InlineData(ModelDType.BFloat16, "bf16", ScalarType.BFloat16, 2)]
    [InlineData(ModelDType.Float16, "fp16", ScalarType.Float16, 2)]
    public void DTypesMapToTorchAndBack(ModelDType dtype, string shortName, ScalarType scalar, int size)
    {
        Assert.Equal(shortName, dtype.ShortName());
        Assert.Equal(dtype, ComputeOptions.ParseDType(dtype.ShortName()));
        Assert.Equal(scalar, dtype.ToScalarType());
        Assert.Equal(size, dtype.ElementSize());
    }

    [Theory]
    [InlineData("auto", DeviceKind.Auto)]
    [InlineData("cpu", DeviceKind.Cpu)]
    [InlineData("CPU", DeviceKind.Cpu)]
    [InlineData(" cuda ", DeviceKind.Cuda)]
    [InlineData("gpu", DeviceKind.Cuda)]
    [InlineData("cuda:0", DeviceKind.Cuda)]
    public void ParseDeviceAcceptsTheDocumentedSpellings(string text, DeviceKind expected)
    {
        Assert.Equal(expected, ComputeOptions.ParseDevice(text));
    }

    [Theory]
    [InlineData("cuda:1")]
    [InlineData("tpu")]
    [InlineData("")]
    [InlineData("mps")]
    public void ParseDeviceRejectsOthersNamingTheChoices(string text)
    {
        var ex = Assert.Throws<ArgumentException>(() => ComputeOptions.ParseDevice(text));
        Assert.Contains($"'{text}'", ex.Message);
        foreach (string choice in new[] { "cpu", "cuda", "auto" }) Assert.Contains(choice, ex.Message);
    }

    [Fact]
    public void CpuResolvesToTheCpu()
    {
        Assert.Equal(DeviceType.CPU, ComputeOptions.ResolveDevice(DeviceKind.Cpu).type);
    }

    [Fact]
    public void CudaWithoutACudaLibtorchSaysHowToGetOne()
    {
        if (ComputeOptions.IsCudaAvailable()) Assert.Skip("CUDA is available here");
        var ex = Assert.Throws<InvalidOperationException>(() => ComputeOptions.ResolveDevice(DeviceKind.Cuda));
        Assert.Contains("LD_LIBRARY_PATH", ex.Message);
        Assert.Contains("run on the CPU", ex.Message);
        // Auto falls back to the CPU, and asking again gives the same answer.
        Assert.Equal(DeviceType.CPU, ComputeOptions.ResolveDevice(DeviceKind.Auto).type);
        Assert.False(ComputeOptions.IsCudaAvailable());
    }
}
