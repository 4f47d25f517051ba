using Tern.Runtime;

namespace Tern.Tests.Generation;

/// <summary>Issue 12's compositions on the CPU: static-shape bodies without graphs, serving pools, offloaded blocks.</summary>
public sealed class CompositionTests : CompositionContract
{
    protected override DeviceKind Device => DeviceKind.Cpu;
    protected override bool Graphs => false;
}
