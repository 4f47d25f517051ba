using Tern.Models;
using Tern.Offloading;
using Tern.Runtime;

namespace Tern.Tests.Offloading;

/// <summary>The offload parity contract on the CPU.</summary>
public sealed class OffloadedModelTests : OffloadParityContract
{
    protected override DeviceKind Device => DeviceKind.Cpu;

    /// <summary>A step past a learned position table is refused with the reason, as the plain runtime refuses it, rather than
    /// ending in an index error inside libtorch.</summary>
    [Fact]
    public void AStepPastTheLearnedPositionsIsAClearError()
    {
        using var offloaded = OffloadedModel.Load(Fixtures.ModelDir("opt-prenorm"), new ModelLoadOptions { Device = DeviceKind.Cpu },
            new OffloadOptions { Policy = OffloadPolicy.Parse("w=0/100/0,kv=0/100/0,act=0/100/0,gbs=1,ngb=1") });
        using var runner = offloaded.CreateRunner(1, 80, 80, null);
        var prompt = Enumerable.Range(3, 70).ToArray(); // the fixture has 64 learned positions
        var error = Assert.Throws<InvalidOperationException>(() =>
            runner.Forward(ForwardBatch.LeftPadded(new[] { (IReadOnlyList<int>)prompt }, offloaded.Device, lastPositionOnly: true)));
        Assert.Contains("64 learned positions", error.Message);
    }
}
