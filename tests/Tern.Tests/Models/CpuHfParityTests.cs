using Tern.Runtime;

namespace Tern.Tests.Models;

/// <summary>The HF parity contract on the CPU in fp32: max |Δlogit| ≤ 1e-4 and identical greedy tokens.</summary>
public sealed class CpuHfParityTests : HfParityContract
{
    protected override DeviceKind Device => DeviceKind.Cpu;
}
