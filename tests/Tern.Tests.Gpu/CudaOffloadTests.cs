using Tern.Interop;
using Tern.Offloading;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using static Tern.Tests.TensorChecks;

namespace Tern.Tests.Gpu;

/// <summary>The offload parity contract on CUDA: the GPU tier is the card, overlap runs on the CUDA copy stream.</summary>
public sealed class CudaOffloadParityTests : OffloadParityContract
{
    protected override DeviceKind Device => DeviceKind.Cuda;
    protected override float DelegatedAttentionTolerance => 1e-4f;
    protected override float PolicyCacheTolerance => 2e-6f;
}

/// <summary>The offloaded soft-prompt contract on CUDA (not yet run on a GPU when written: the tolerance is the policy caches').</summary>
public sealed class CudaOffloadedSoftPromptTests : OffloadedSoftPromptContract
{
    protected override DeviceKind Device => DeviceKind.Cuda;
    protected override float Tolerance => 2e-6f;
}

/// <summary>The CUDA transfer engine on its own: pinned copies both ways, ordering after compute, disk jobs after copies.</summary>
public sealed class CudaTransferEngineTests
{
    static readonly Device Cuda = ComputeOptions.ResolveDevice(DeviceKind.Cuda);

    [Fact]
    public void CopiesRoundTripThroughPinnedMemoryAfterTheComputeThatMadeThem()
    {
        using var engine = new CudaTransferEngine();
        using var source = torch.arange(1 << 22, ScalarType.Float32).pin_memory();
        using var onGpu = torch.empty(1 << 22, ScalarType.Float32, Cuda);
        engine.Copy(onGpu, source);
        engine.Synchronize();
        Assert.True(Same(onGpu.cpu(), source));
        // A store issued right after the compute that produces its source must see the computed values.
        using var produced = onGpu * 2 + 1;
        using var back = torch.empty(1 << 22, ScalarType.Float32).pin_memory();
        engine.Copy(back, produced);
        engine.Synchronize();
        Assert.True(Same(back, source * 2 + 1));
    }

    [Theory]
    [InlineData(1 << 10)]   // small: libtorch's pinned allocator
    [InlineData(4 << 20)]   // large: registered in place with the driver
    public void HostBuffersLoadAndStoreThroughTheCopyStream(int elements)
    {
        using var engine = new CudaTransferEngine();
        var values = torch.randn(elements, ScalarType.Float32);
        using var host = new HostBuffer(values.clone(), pin: true);
        var loaded = host.Load(engine, Cuda, 0, new long[] { elements });
        engine.Synchronize();
        Assert.True(Same(loaded.cpu(), values));
        using var doubled = (loaded * 2).DetachFromDisposeScope();
        host.Store(engine, doubled, 0);
        var again = host.Load(engine, Cuda, 0, new long[] { elements });
        engine.Synchronize();
        Assert.True(Same(again.cpu(), values * 2));
        loaded.Dispose();
        again.Dispose();
    }

    [Fact]
    public void DiskJobsRunAfterTheCopiesIssuedBeforeThem()
    {
        using var temp = new TempDir();
        string parent = temp.Path;
        using var directory = OffloadDirectory.Create(parent);
        using var engine = new CudaTransferEngine();
        using var disk = new DiskBuffer(directory, 1 << 20, ScalarType.Float16, "probe");
        using var values = torch.randn(1 << 20, ScalarType.Float16, Cuda);
        disk.Store(engine, values, 0);              // device → pinned staging (copy stream) → file (worker, after the copy)
        engine.Synchronize();
        var loaded = disk.Load(engine, Cuda, 0, new long[] { 1 << 20 });
        engine.Synchronize();
        Assert.True(Same(loaded, values));
        loaded.Dispose();
    }

    [Fact]
    public void TheGpuCapEmulatesASmallerCard()
    {
        var e = Assert.Throws<InvalidOperationException>(() => OffloadedModel.Load(Fixtures.ModelDir("llama-gqa"),
            new Tern.Models.ModelLoadOptions { Device = DeviceKind.Cuda },
            new OffloadOptions { Policy = OffloadPolicy.AllGpu(), GpuMemoryLimit = 10_000 }));
        Assert.Contains("GPU memory limit", e.Message);
    }
}

/// <summary>Issue 12's compositions on CUDA: real CUDA graphs for every policy, serving pools and offloaded blocks.</summary>
public sealed class CudaCompositionTests : CompositionContract
{
    protected override DeviceKind Device => DeviceKind.Cuda;
    protected override bool Graphs => true;
}

/// <summary>MultiHyena models on CUDA: decode steps captured as CUDA graphs (undistilled and distilled), by the generator and
/// by serving pools, give the eager tokens.</summary>
public sealed class CudaHyenaStepTests : HyenaStepContract
{
    protected override DeviceKind Device => DeviceKind.Cuda;
    protected override bool Graphs => true;
}
