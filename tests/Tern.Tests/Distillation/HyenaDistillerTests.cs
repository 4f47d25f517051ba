using Tern.Distillation;
using Tern.Models.Hyena;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Distillation;

/// <summary>The distillation pipeline over layers: order from the Hankel spectra, fit, folder, and the folder read back runs.</summary>
public sealed class HyenaDistillerTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), $"tern-distill-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public void LayersAreDistilledAtTheirHankelOrderIntoAFolderThatLoadsAndRuns()
    {
        using var scope = torch.NewDisposeScope();
        using var generator = new torch.Generator(31);
        var shape = new HyenaOptions { Width = 4, MaxLength = 48, FilterWidth = 8, EmbedDim = 5, SineFrequency = 1 };
        using var hyena = HyenaOperator.Create(shape, generator);
        using var multi = HyenaOperator.Create(shape with { Heads = 2 }, generator);
        var options = new HyenaDistillOptions { HankelTolerance = 1e-2, Fit = new ModalFitOptions { Iterations = 20 } };
        var layers = HyenaDistiller.Distill(new[] { hyena, multi }, _dir, options);

        var output = TestContext.Current.TestOutputHelper;
        foreach (var (layer, op) in layers.Zip(new[] { hyena, multi }))
        {
            int order = HankelSpectrum.Compute(op.Filters(48)[0]).Max(s => s.Order(1e-2));
            Assert.Equal((order + 1) / 2, layer.Filters.Modes);
            Assert.Equal(op.Options.FilterChannels, layer.Filters.Channels);
            output?.WriteLine($"layer {layer.Layer}: Hankel order {order}, S = {layer.Filters.Modes}, errors {string.Join(" ", layer.RelativeError.Select(e => e.ToString("E2")))}");
            Assert.All(layer.RelativeError, e => Assert.True(e < 0.05, $"{e}"));
        }

        var banks = ModalCheckpoint.Load(_dir, new[] { 0, 1 });
        using var recurrence = ModalRecurrence.Create(banks[1]);
        var u = torch.randn(new long[] { 1, 6, 4 }, generator: generator);
        var (prefill, state) = multi.Prefill(u, recurrence);
        using (state)
        {
            var step = multi.Step(torch.randn(new long[] { 1, 4 }, generator: generator), state, recurrence);
            Assert.Equal(new long[] { 1, 6, 4 }, prefill.shape);
            Assert.Equal(new long[] { 1, 4 }, step.shape);
        }

        var fixedOrder = HyenaDistiller.DistillLayer(hyena, 0, options with { Modes = 2 });
        Assert.Equal(2, fixedOrder.Filters.Modes);
        using var order3 = HyenaOperator.Create(shape with { Order = 3 }, generator);
        Assert.Contains("layer 5", Assert.Throws<NotSupportedException>(() => HyenaDistiller.DistillLayer(order3, 5, options)).Message);
    }
}
