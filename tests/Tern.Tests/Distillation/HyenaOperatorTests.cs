using Tern.Distillation;
using Tern.Models.Hyena;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Distillation;

/// <summary>The Hyena operator (brief §1.2) against a loop-level reference, and its distilled recurrent mode against the
/// convolution mode (brief §1.10 "layer equivalence", on random activations).</summary>
public class HyenaOperatorTests
{
    static readonly HyenaOptions Small = new() { Width = 6, MaxLength = 64, FilterWidth = 16, EmbedDim = 9, SineFrequency = 1 };

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void ForwardFollowsTheCodeOrderTapByTap(int heads)
    {
        using var scope = torch.NewDisposeScope();
        using var generator = new torch.Generator(21);
        using var op = HyenaOperator.Create(Small with { Heads = heads }, generator);
        const int length = 12, d = 6;
        var u = torch.randn(new long[] { 1, length, d }, ScalarType.Float64, generator: generator);
        var y = op.Forward(u.to(ScalarType.Float32)).to(ScalarType.Float64);

        var w = op.Weights.ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.Float64));
        var z = u[0].matmul(w["in_proj.weight"].t()) + w["in_proj.bias"];                        // [L, 3D]
        var taps = w["short_filter.weight"].squeeze(1);                                             // [3D, 3]
        var zf = torch.zeros_like(z);
        for (int t = 0; t < length; t++)
        {
            var acc = w["short_filter.bias"].clone();
            for (int j = 0; j < 3; j++)                                                             // tap 2 on z_t, tap 0 on z_{t−2}
                if (t - 2 + j >= 0) acc += taps[.., j] * z[t - 2 + j];
            zf[t] = acc;
        }
        var (q, k, v) = (zf.narrow(1, 0, d), zf.narrow(1, d, d), zf.narrow(1, 2 * d, d));
        var h = op.Filters(length)[0].to(ScalarType.Float64);                                       // [D or M, L]
        var beta = w["filter_fn.bias"];
        var expected = torch.zeros(length, d, ScalarType.Float64);
        for (int t = 0; t < length; t++)
        {
            if (heads == 0)
            {
                var gated = k * v;                                                                  // gate before the conv
                var conv = torch.zeros(d, ScalarType.Float64);
                for (int s = 0; s <= t; s++) conv += h[.., s] * gated[t - s];
                expected[t] = q[t] * (conv + beta * gated[t]);
                continue;
            }
            int n = d / heads;
            for (int m = 0; m < heads; m++)
            {
                Tensor Z(int i) => k[i].narrow(0, m * n, n).outer(v[i].narrow(0, m * n, n));       // Z[i, j] = k_i v_j
                var mixed = beta[m] * Z(t);
                for (int s = 0; s <= t; s++) mixed += h[m, s] * Z(t - s);
                expected[t].narrow(0, m * n, n).copy_(q[t].narrow(0, m * n, n).matmul(mixed));     // y_j = Σ_i q_i W[i, j]
            }
        }
        expected = expected.matmul(w["out_proj.weight"].t()) + w["out_proj.bias"];
        Assert.True(DistillationTestData.RelativeError(y[0], expected) < 1e-5);
    }

    [Fact]
    public void FiltersAreThePostWindowTapsOfTheFullWindow()
    {
        using var scope = torch.NewDisposeScope();
        using var generator = new torch.Generator(22);
        using var op = HyenaOperator.Create(Small with { Order = 3 }, generator);
        var full = op.Filters(64);
        Assert.Equal(new long[] { 2, 6, 64 }, full.shape);
        Assert.True(op.Filters(10).allclose(full.narrow(2, 0, 10), rtol: 0, atol: 0));
        // The window makes the fastest-decaying channel (the last: |δ| = ln(100)/0.3) small at the end relative to its start.
        var last = full[1, 5].abs();
        Assert.True(last.narrow(0, 54, 10).max().item<float>() < last.narrow(0, 0, 10).max().item<float>());
        var u = torch.randn(new long[] { 2, 20, 6 }, generator: generator);
        Assert.Equal(new long[] { 2, 20, 6 }, op.Forward(u).shape);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void DistilledRecurrentLayerEqualsItsConvolutionModeAcrossThePrefillHandOff(int heads)
    {
        const int prompt = 20, decode = 10;
        using var scope = torch.NewDisposeScope();
        using var generator = new torch.Generator(23);
        using var op = HyenaOperator.Create(Small with { Heads = heads }, generator);
        var fit = ModalFit.Fit(op.Filters(64)[0], new ModalFitOptions { Modes = 8, Iterations = 50 }, "layer 0");
        using var recurrence = ModalRecurrence.Create(fit.Filters);
        var u = torch.randn(new long[] { 2, prompt + decode, 6 }, generator: generator);

        var (prefill, state) = op.Prefill(u.narrow(1, 0, prompt), recurrence);
        using (state)
        {
            Assert.Equal(new long[] { 2, 18, 2 }, state.Fir.shape);
            Assert.Equal(heads == 0 ? new long[] { 2, 6, 8 } : new long[] { 2, 2, 3, 3, 8 }, state.Modal.shape);
            var steps = Enumerable.Range(prompt, decode).Select(t => op.Step(u.select(1, t), state, recurrence)).ToArray();
            var recurrent = torch.cat(new[] { prefill, torch.stack(steps, 1) }, 1);
            var distilledConv = op.Forward(u, recurrence.Kernel(prompt + decode).unsqueeze(0));
            double error = DistillationTestData.RelativeError(recurrent, distilledConv);
            double vsOriginal = DistillationTestData.RelativeError(distilledConv, op.Forward(u));
            TestContext.Current.TestOutputHelper?.WriteLine(
                $"heads {heads}: recurrent vs distilled conv {error:E2}; distilled vs original layer {vsOriginal:E2}; filter errors max {fit.RelativeError.Max():E2}");
            Assert.True(error < 1e-5, $"{error}");
        }
    }
}
