namespace Tern.Offloading;

/// <summary>A memory tier of FlexGen's hierarchy.</summary>
public enum Tier
{
    /// <summary>The compute device's memory (the GPU; on a CPU-only machine the compute device itself).</summary>
    Gpu,
    /// <summary>Host memory (pinned when the compute device is a GPU).</summary>
    Cpu,
    /// <summary>Files under the offload directory.</summary>
    Disk,
}
