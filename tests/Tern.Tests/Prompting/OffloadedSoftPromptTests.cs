using Tern.Runtime;

namespace Tern.Tests.Prompting;

/// <summary>The offloaded soft-prompt contract on the CPU: the compute device plays the GPU tier; logits bit for bit.</summary>
public sealed class OffloadedSoftPromptTests : OffloadedSoftPromptContract
{
    protected override DeviceKind Device => DeviceKind.Cpu;
}
