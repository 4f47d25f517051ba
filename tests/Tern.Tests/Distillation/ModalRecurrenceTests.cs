using System.Numerics;
using Tern.Distillation;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Distillation;

/// <summary>Brief §1.10, second and third rows: the recurrence equals the convolution with the modal kernel; the prefill state
/// equals running the recurrence over the prompt, and decoding from it continues the convolution (pitfall 8).</summary>
public class ModalRecurrenceTests
{
    [Fact]
    public void KernelIsTheModalSumInTheShConvention()
    {
        var bank = DistillationTestData.RandomBank(channels: 2, modes: 3, seed: 1, realPole: true);
        using var scope = torch.NewDisposeScope();
        var kernel = bank.Kernel(20).data<double>().ToArray();
        for (int c = 0; c < 2; c++)
            for (int t = 0; t < 20; t++)
            {
                // ĥ_t = Re Σ_n R_n λ_n^t (t from 0, no factor 2, no conjugates added) + D on t = 0.
                double expected = t == 0 ? bank.Direct[c] : 0;
                for (int n = 0; n < 3; n++) expected += (bank.Residues[c * 3 + n] * Complex.Pow(bank.Poles[c * 3 + n], t)).Real;
                Assert.Equal(expected, kernel[c * 20 + t], 12);
            }
    }

    [Theory]
    [InlineData(ScalarType.ComplexFloat64, 1e-12)]
    [InlineData(ScalarType.ComplexFloat32, 1e-6)]
    public void RecurrenceEqualsConvolutionWithTheModalKernel(ScalarType stateType, double tolerance)
    {
        var bank = DistillationTestData.RandomBank(channels: 4, modes: 5, seed: 2, realPole: true);
        using var scope = torch.NewDisposeScope();
        using var recurrence = ModalRecurrence.Create(bank, stateType: stateType);
        using var generator = new torch.Generator(7);
        var input = torch.randn(new long[] { 3, 4, 200 }, ScalarType.Float64, generator: generator);
        var expected = LongConvolution.Causal(input, bank.Kernel(200));
        var state = recurrence.NewState(3);
        var outputs = Enumerable.Range(0, 200).Select(t => recurrence.Step(state, input.select(2, t))).ToArray();
        double error = DistillationTestData.RelativeError(torch.stack(outputs, 2), expected);
        TestContext.Current.TestOutputHelper?.WriteLine($"{stateType}: relative error {error:E2}");
        Assert.True(error < tolerance, $"{error}");
        Assert.True(DistillationTestData.RelativeError(recurrence.Convolve(input), expected) < Math.Max(tolerance, 1e-7));
    }

    [Theory]
    [InlineData(ScalarType.ComplexFloat64, 1e-12)]
    [InlineData(ScalarType.ComplexFloat32, 1e-5)]
    public void PrefillStateEqualsRunningTheRecurrenceAndDecodingContinuesTheConvolution(ScalarType stateType, double tolerance)
    {
        const int prompt = 37, decode = 12;
        var bank = DistillationTestData.RandomBank(channels: 3, modes: 4, seed: 3);
        using var scope = torch.NewDisposeScope();
        using var recurrence = ModalRecurrence.Create(bank, stateType: stateType);
        using var generator = new torch.Generator(8);
        var input = torch.randn(new long[] { 2, 3, prompt + decode }, ScalarType.Float64, generator: generator);

        var stepped = recurrence.NewState(2);
        for (int t = 0; t < prompt; t++) recurrence.Step(stepped, input.select(2, t));
        var prefilled = recurrence.Prefill(input.narrow(2, 0, prompt));
        Assert.Equal(new long[] { 2, 3, 4 }, prefilled.shape);
        Assert.Equal(stateType, prefilled.dtype);
        double stateError = DistillationTestData.RelativeError(torch.view_as_real(prefilled), torch.view_as_real(stepped));
        Assert.True(stateError < tolerance, $"state: {stateError}");

        // Hand-off: prompt outputs by FFT, then steps from the prefill state on tokens T, T+1, … equal the whole convolution.
        var whole = LongConvolution.Causal(input, bank.Kernel(prompt + decode));
        var promptOutputs = recurrence.Convolve(input.narrow(2, 0, prompt));
        var decoded = Enumerable.Range(prompt, decode).Select(t => recurrence.Step(prefilled, input.select(2, t))).ToArray();
        var joined = torch.cat(new[] { promptOutputs, torch.stack(decoded, 2) }, 2);
        double outputError = DistillationTestData.RelativeError(joined, whole);
        Assert.True(outputError < Math.Max(tolerance, 1e-6), $"outputs: {outputError}");
    }

    [Fact]
    public void LeftPaddingLeavesThePrefillStateUnchanged()
    {
        var bank = DistillationTestData.RandomBank(channels: 2, modes: 3, seed: 4);
        using var scope = torch.NewDisposeScope();
        using var recurrence = ModalRecurrence.Create(bank, stateType: ScalarType.ComplexFloat64);
        using var generator = new torch.Generator(9);
        var prompt = torch.randn(new long[] { 1, 2, 10 }, ScalarType.Float64, generator: generator);
        var padded = torch.cat(new[] { torch.zeros(1, 2, 5, ScalarType.Float64), prompt }, 2);
        Assert.True(torch.view_as_real(recurrence.Prefill(padded)).allclose(torch.view_as_real(recurrence.Prefill(prompt)), rtol: 0, atol: 1e-12));
    }
}
