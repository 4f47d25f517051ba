using Tern.Interop;

namespace Tern.Tests.Sparsity;

/// <summary>The malloc setting predictor training relies on (glibc: CI and the development machine run Debian).</summary>
public sealed class NativeHeapTests
{
    [Fact]
    public void TheMmapThresholdTakesOnGlibc()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux() && File.Exists("/lib/x86_64-linux-gnu/libc.so.6"), "glibc on x86-64 Linux only");
        Assert.True(NativeHeap.MapBlocksFrom(64 * 1024));
    }
}
