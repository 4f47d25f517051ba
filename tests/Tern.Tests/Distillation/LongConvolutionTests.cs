using Tern.Distillation;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Distillation;

/// <summary>Brief §1.10, first row: the FFT long convolution equals the direct O(L²) sum.</summary>
public class LongConvolutionTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(64)]
    [InlineData(100)]
    public void FftConvolutionEqualsTheDirectSum(int length)
    {
        using var scope = torch.NewDisposeScope();
        using var generator = new torch.Generator(11);
        var input = torch.randn(new long[] { 2, 3, length }, ScalarType.Float64, generator: generator);
        var filter = torch.randn(new long[] { 3, length }, ScalarType.Float64, generator: generator);
        var direct = torch.zeros_like(input);
        var (w, h, y) = (input.data<double>().ToArray(), filter.data<double>().ToArray(), new double[input.numel()]);
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < 3; c++)
                for (int t = 0; t < length; t++)
                {
                    double sum = 0;
                    for (int s = 0; s <= t; s++) sum += h[c * length + s] * w[(b * 3 + c) * length + t - s]; // y_t = Σ h_s w_{t−s}
                    y[(b * 3 + c) * length + t] = sum;
                }
        var expected = torch.tensor(y, ScalarType.Float64).view(2, 3, length);

        Assert.True(DistillationTestData.RelativeError(LongConvolution.Causal(input, filter), expected) < 1e-12);
        var fp32 = LongConvolution.Causal(input.to(ScalarType.Float32), filter.to(ScalarType.Float32));
        Assert.Equal(ScalarType.Float32, fp32.dtype);
        Assert.True(DistillationTestData.RelativeError(fp32, expected) < 1e-5);
    }

    [Theory]
    [InlineData(1, 2)]
    [InlineData(64, 128)]
    [InlineData(100, 256)]
    [InlineData(2048, 4096)]
    public void FftSizeIsThePowerOfTwoAtLeastTwiceTheLength(int length, long size) =>
        Assert.Equal(size, LongConvolution.FftSize(length));

    [Fact]
    public void ALongerFilterUsesItsFirstTapsAndAShorterOneIsRefused()
    {
        using var scope = torch.NewDisposeScope();
        using var generator = new torch.Generator(3);
        var input = torch.randn(new long[] { 1, 2, 10 }, ScalarType.Float64, generator: generator);
        var filter = torch.randn(new long[] { 2, 16 }, ScalarType.Float64, generator: generator);
        var y = LongConvolution.Causal(input, filter);
        Assert.True(y.allclose(LongConvolution.Causal(input, filter.narrow(1, 0, 10)), rtol: 0, atol: 1e-12));
        var error = Assert.Throws<ArgumentException>(() => LongConvolution.Causal(input, filter.narrow(1, 0, 9)));
        Assert.Contains("9 taps", error.Message);
    }
}
