using Tern.Runtime;

namespace Tern.Tests.Offloading;

/// <summary>The offload parity contract on the CPU.</summary>
public sealed class OffloadedModelTests : OffloadParityContract
{
    protected override DeviceKind Device => DeviceKind.Cpu;
}
