using Tern.Runtime;

namespace Tern.Tests.Models;

/// <summary>MultiHyena static-shape steps on the CPU: the graph bodies without graphs, in the generator and serving pools.</summary>
public sealed class HyenaStepTests : HyenaStepContract
{
    protected override DeviceKind Device => DeviceKind.Cpu;
    protected override bool Graphs => false;
}
