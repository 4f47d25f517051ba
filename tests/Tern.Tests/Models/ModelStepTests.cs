using Tern.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Models;

public sealed class ModelStepTests
{
    /// <summary>The kept heads' column offsets are made once a step and handed to every layer: the same tensor while the count
    /// and device stay (every layer once made its own, as TorchSharp's Device compares by reference), a new one for another
    /// count, and none left after the step.</summary>
    [Fact]
    public void OffsetsAreMadeOnceAStep()
    {
        using var scope = torch.NewDisposeScope();
        var batch = new ForwardBatch
        {
            InputIds = torch.zeros(1, 1, ScalarType.Int64), Positions = torch.zeros(1, 1, ScalarType.Int64), RealTokens = new[] { 1 },
            MaxPosition = 0,
        };
        var step = new ModelStep(batch);
        var first = step.Offsets(8, torch.zeros(1).device); // a device object of its own, as each layer's tensors give
        Assert.Same(first, step.Offsets(8, torch.ones(1).device));
        Assert.Equal(Enumerable.Range(0, 8).Select(i => (long)i), first.data<long>().ToArray());
        var other = step.Offsets(4, torch.zeros(1).device);
        Assert.NotSame(first, other);
        Assert.Equal(4, other.size(0));
        step.Dispose();
        Assert.True(other.IsInvalid);
    }
}
