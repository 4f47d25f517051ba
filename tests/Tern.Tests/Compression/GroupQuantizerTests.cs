using Tern.Compression;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Compression;

public sealed class GroupQuantizerTests
{
    /// <summary>|x − x̂| ≤ Δ/2 per group (Δ = range / (2^b − 1)), plus the rounding of Δ and min in the stored dtype.</summary>
    [Theory]
    [InlineData(4, -1, ScalarType.Float32)]
    [InlineData(8, -1, ScalarType.Float32)]
    [InlineData(4, 0, ScalarType.Float32)]
    [InlineData(4, 1, ScalarType.Float16)]
    [InlineData(8, 2, ScalarType.BFloat16)]
    public void RoundTripErrorIsBoundedByHalfAStepPerGroup(int bits, int dimension, ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(3);
        var x = (torch.randn(3, 100, 37) * 2).to(dtype); // 100 and 37 are not multiples of 64: padding and trimming
        var options = new GroupQuantizationOptions { Bits = bits, Dimension = dimension };
        using var q = GroupQuantizer.Quantize(x, options);
        var back = GroupQuantizer.Dequantize(q);
        Assert.Equal(x.shape, back.shape);
        Assert.Equal(dtype, back.dtype);

        // The bound per element from its group's range (pads are zeros and join min/max, so include 0).
        int dim = dimension < 0 ? dimension + 3 : dimension;
        var moved = x.to(ScalarType.Float32).movedim(new long[] { dim }, new long[] { -1 });
        long n = moved.shape[^1], padded = (n + 63) / 64 * 64;
        var groups = torch.nn.functional.pad(moved, new long[] { 0, padded - n }).reshape(moved.shape[..^1].Append(padded / 64).Append(64).ToArray());
        var range = groups.amax(new long[] { -1 }, keepdim: true) - groups.amin(new long[] { -1 }, keepdim: true);
        double storageEps = dtype == ScalarType.Float32 ? 1e-6 : dtype == ScalarType.Float16 ? 1.0 / 1024 : 1.0 / 128;
        double typeEps = dtype == ScalarType.Float32 ? 0 : storageEps; // the result is rounded to the dtype too
        var bound = range / ((1 << bits) - 1) * (0.5 + (1 << bits) * storageEps) + groups.abs().amax(new long[] { -1 }, keepdim: true) * (storageEps + typeEps) + 1e-6;
        var boundPerElement = bound.expand(groups.shape).reshape(moved.shape[..^1].Append(padded).ToArray()).narrow(-1, 0, n)
            .movedim(new long[] { -1 }, new long[] { dim });
        var error = (back.to(ScalarType.Float32) - x.to(ScalarType.Float32)).abs();
        double excess = (error - boundPerElement).max().item<float>();
        Assert.True(excess <= 0, $"error exceeds the bound by {excess}");
    }

    /// <summary>The one-kernel x̂ = q·Δ + mn rounds exactly as the formula in fp32 converted once at the end.</summary>
    [Theory]
    [InlineData(4, ScalarType.Float16)]
    [InlineData(4, ScalarType.BFloat16)]
    [InlineData(8, ScalarType.Float16)]
    public void DequantizationEqualsTheFp32FormulaRoundedOnce(int bits, ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(5);
        var x = (torch.randn(256, 192) * 3 + 1).to(dtype);
        using var q = GroupQuantizer.Quantize(x, new GroupQuantizationOptions { Bits = bits, GroupSize = 64, Dimension = 0 });
        var codes = bits == 4
            ? torch.stack(new[] { q.Codes.to(ScalarType.Int32).bitwise_right_shift(4), q.Codes.to(ScalarType.Int32).bitwise_and(15) }, -1).reshape(192, 4, 64)
            : q.Codes;
        var formula = (codes.to(ScalarType.Float32) * q.Step.to(ScalarType.Float32) + q.Min.to(ScalarType.Float32))
            .reshape(192, 256).t().to(dtype);
        Assert.True(GroupQuantizer.Dequantize(q).equal(formula).all().item<bool>());
    }

    [Fact]
    public void FourBitCodesPackTwoPerByteEvenElementHigh()
    {
        using var scope = torch.NewDisposeScope();
        // One group 0..15 repeated: min 0, step 1, so the codes are the values themselves.
        var x = torch.arange(64, ScalarType.Float32).remainder(16).reshape(1, 64);
        using var q = GroupQuantizer.Quantize(x, new GroupQuantizationOptions { Bits = 4 });
        Assert.Equal(new long[] { 1, 1, 32 }, q.Codes.shape);
        var bytes = q.Codes.flatten().data<byte>().ToArray();
        Assert.Equal((byte)(0 << 4 | 1), bytes[0]);
        Assert.Equal((byte)(14 << 4 | 15), bytes[7]);
        Assert.Equal(0.0, (GroupQuantizer.Dequantize(q) - x).abs().max().item<float>());
        // 4.5 bits per element at fp32 pairs: 32 code bytes + (step, min) 8 bytes for 64 elements
        Assert.Equal(40, q.Bytes);
    }

    [Fact]
    public void ConstantGroupsComeBackExactly()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.full(new long[] { 2, 128 }, 0.3125f);
        x[1].narrow(0, 64, 64).fill_(-7.5f);
        using var q = GroupQuantizer.Quantize(x);
        Assert.Equal(0.0, (GroupQuantizer.Dequantize(q) - x).abs().max().item<float>());
        Assert.False(q.Step.isinf().any().item<bool>());
    }

    [Fact]
    public void BadOptionsAreRefused()
    {
        using var x = torch.randn(4, 64);
        Assert.Throws<ArgumentException>(() => GroupQuantizer.Quantize(x, new GroupQuantizationOptions { Bits = 5 }));
        Assert.Throws<ArgumentException>(() => GroupQuantizer.Quantize(x, new GroupQuantizationOptions { GroupSize = 7 }));
        Assert.Throws<ArgumentException>(() => GroupQuantizer.Quantize(x, new GroupQuantizationOptions { Dimension = 2 }));
        using var ints = torch.ones(4, 64, ScalarType.Int32);
        Assert.Throws<ArgumentException>(() => GroupQuantizer.Quantize(ints));
    }
}
