using Microsoft.Win32.SafeHandles;
using Tern.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Offloading;

/// <summary>
/// A flat run of <see cref="Elements"/> elements kept on one tier: device memory, (pinned) host memory, or a preallocated
/// file. Loads and stores go through an <see cref="ITransferEngine"/> and are complete after its next
/// <see cref="ITransferEngine.Synchronize"/>; every tensor handed out is outside any dispose scope and owned by the caller.
/// </summary>
internal abstract class TierBuffer : IDisposable
{
    protected TierBuffer(long elements, ScalarType dtype)
    {
        Elements = elements;
        DType = dtype;
    }

    /// <summary>Where the elements live.</summary>
    public abstract Tier Tier { get; }

    /// <summary>Capacity in elements.</summary>
    public long Elements { get; }

    /// <summary>Element type.</summary>
    public ScalarType DType { get; }

    /// <summary>Capacity in bytes.</summary>
    public long Bytes => Elements * DType.ElementSize();

    /// <summary>A buffer of <paramref name="elements"/> on <paramref name="tier"/>; disk buffers are files in <paramref name="directory"/>.</summary>
    public static TierBuffer Create(Tier tier, long elements, ScalarType dtype, Device device, ITransferEngine engine, OffloadDirectory? directory, string name) => tier switch
    {
        Tier.Gpu => new DeviceBuffer(torch.empty(elements, dtype, device)),
        Tier.Cpu => new HostBuffer(torch.empty(elements, dtype), engine.PinsHostMemory),
        _ => new DiskBuffer(directory ?? throw new InvalidOperationException("the policy puts data on disk but no offload directory was given."),
            elements, dtype, name),
    };

    /// <summary>Starts loading elements [offset, offset + count of <paramref name="shape"/>) into a new contiguous tensor of
    /// <paramref name="shape"/> on <paramref name="device"/> (a view of the buffer itself on the GPU tier).</summary>
    public virtual Tensor Load(ITransferEngine engine, Device device, long offset, long[] shape)
    {
        var target = torch.empty(shape, DType, device).DetachFromDisposeScope();
        LoadInto(engine, target, offset);
        return target;
    }

    /// <summary>Starts loading elements [offset, offset + its count) into <paramref name="target"/>, a contiguous tensor
    /// (on the compute device or the host) that the caller keeps alive until the engine synchronizes.</summary>
    public abstract void LoadInto(ITransferEngine engine, Tensor target, long offset);

    /// <summary>Starts storing <paramref name="source"/> (contiguous, on the compute device) at element <paramref name="offset"/>;
    /// the caller keeps <paramref name="source"/> alive until the engine synchronizes.</summary>
    public abstract void Store(ITransferEngine engine, Tensor source, long offset);

    /// <inheritdoc />
    public abstract void Dispose();

    protected void CheckRange(long offset, long count)
    {
        if (offset < 0 || count < 0 || offset + count > Elements)
            throw new ArgumentOutOfRangeException(nameof(offset), $"elements [{offset}, {offset + count}) are outside a {Tier} buffer of {Elements}.");
    }

    internal static long Count(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>A host tensor of <paramref name="count"/> elements that relays a transfer between the compute device and
    /// host memory it cannot reach at copy speed (a file, a strided view): page-locked on a GPU, freed when the engine
    /// synchronizes.</summary>
    internal static Tensor Staging(ITransferEngine engine, long count, ScalarType dtype)
    {
        var staging = torch.empty(count, dtype).DetachFromDisposeScope();
        if (engine.PinsHostMemory)
        {
            var pinned = staging.pin_memory().DetachFromDisposeScope();
            staging.Dispose();
            staging = pinned;
        }
        engine.KeepAlive(staging);
        return staging;
    }
}

/// <summary>Elements resident on the compute device.</summary>
internal sealed class DeviceBuffer(Tensor storage) : TierBuffer(storage.NumberOfElements, storage.dtype)
{
    readonly Tensor storage = storage.DetachFromDisposeScope();

    public override Tier Tier => Tier.Gpu;

    public override Tensor Load(ITransferEngine engine, Device device, long offset, long[] shape)
    {
        CheckRange(offset, Count(shape));
        return storage.narrow(0, offset, Count(shape)).view(shape).DetachFromDisposeScope();
    }

    public override void LoadInto(ITransferEngine engine, Tensor target, long offset)
    {
        CheckRange(offset, target.NumberOfElements);
        using var to = target.view(-1);
        using var from = storage.narrow(0, offset, target.NumberOfElements);
        to.copy_(from);
    }

    public override void Store(ITransferEngine engine, Tensor source, long offset)
    {
        CheckRange(offset, source.NumberOfElements);
        using var to = storage.narrow(0, offset, source.NumberOfElements);
        using var from = source.reshape(-1);
        to.copy_(from);
    }

    public override void Dispose() => storage.Dispose();
}

/// <summary>
/// Elements in host memory, page-locked when the engine asks (so copies to a GPU run asynchronously at full speed). Large
/// buffers are registered with the driver in place (cuMemHostRegister: no copy, exact size); libtorch's pinned allocator,
/// the fallback, rounds every block up to a power of two, which for a 30B model's weights costs a fifth more host memory.
/// </summary>
internal sealed class HostBuffer : TierBuffer
{
    const long RegisterFrom = 4L << 20; // smaller buffers may share pages with others, which the driver refuses to register twice
    readonly Tensor storage;
    readonly IntPtr registered;

    public HostBuffer(Tensor storage, bool pin) : base(storage.NumberOfElements, storage.dtype)
    {
        if (pin && !TryRegister(storage, out registered))
        {
            var pinned = storage.pin_memory();
            storage.Dispose();
            storage = pinned;
        }
        this.storage = storage.DetachFromDisposeScope();
    }

    public override Tier Tier => Tier.Cpu;

    /// <summary>Page-locks a large host tensor's memory in place (undo with <see cref="Interop.CudaDriver.UnregisterHostMemory"/>
    /// before the tensor goes); false for small tensors or when the driver refuses.</summary>
    internal static bool TryRegister(Tensor host, out IntPtr registered)
    {
        registered = Interop.TensorMemory.Pointer(host);
        if (Interop.TensorMemory.Bytes(host) >= RegisterFrom && Interop.CudaDriver.TryRegisterHostMemory(registered, Interop.TensorMemory.Bytes(host))) return true;
        registered = IntPtr.Zero;
        return false;
    }

    public override void LoadInto(ITransferEngine engine, Tensor target, long offset)
    {
        CheckRange(offset, target.NumberOfElements);
        engine.Copy(target, Range(engine, offset, target.NumberOfElements));
    }

    public override void Store(ITransferEngine engine, Tensor source, long offset)
    {
        CheckRange(offset, source.NumberOfElements);
        engine.Copy(Range(engine, offset, source.NumberOfElements), source);
    }

    /// <summary>A view of elements [offset, offset + count), freed when the engine synchronizes (a copy may still read it).</summary>
    Tensor Range(ITransferEngine engine, long offset, long count)
    {
        var range = storage.narrow(0, offset, count).DetachFromDisposeScope();
        engine.KeepAlive(range);
        return range;
    }

    public override void Dispose()
    {
        if (registered != IntPtr.Zero) Interop.CudaDriver.UnregisterHostMemory(registered);
        storage.Dispose();
    }
}

/// <summary>
/// Elements in a preallocated file of the offload directory, read and written with positional I/O by the engine's jobs
/// (FlexGen's disk worker pool); a page-locked staging tensor relays between the file and a GPU.
/// </summary>
internal sealed class DiskBuffer : TierBuffer
{
    readonly SafeFileHandle file;

    public DiskBuffer(OffloadDirectory directory, long elements, ScalarType dtype, string name) : base(elements, dtype)
    {
        file = directory.CreateFile(name, Bytes);
    }

    public override Tier Tier => Tier.Disk;

    public override void LoadInto(ITransferEngine engine, Tensor target, long offset)
    {
        CheckRange(offset, target.NumberOfElements);
        long at = offset * DType.ElementSize();
        if (target.device_type == DeviceType.CPU) engine.Enqueue(() => Read(target, at));
        else
        {
            var staging = Staging(engine, target.NumberOfElements, DType);
            engine.Enqueue(() =>
            {
                Read(staging, at);
                engine.Copy(target, staging);
            });
        }
    }

    public override void Store(ITransferEngine engine, Tensor source, long offset)
    {
        CheckRange(offset, source.NumberOfElements);
        long at = offset * DType.ElementSize();
        if (source.device_type == DeviceType.CPU) engine.Enqueue(() => Write(source, at));
        else
        {
            var staging = Staging(engine, source.NumberOfElements, DType);
            engine.Copy(staging, source);
            engine.Enqueue(() => Write(staging, at));
        }
    }

    /// <summary>Writes a host tensor at once (used while placing weights, before generation starts).</summary>
    public void WriteNow(Tensor source) => Write(source.contiguous(), 0);

    unsafe void Read(Tensor target, long fileOffset)
    {
        byte* p = (byte*)TensorMemory.Pointer(target);
        long n = TensorMemory.Bytes(target);
        for (long done = 0; done < n;)
        {
            int read = RandomAccess.Read(file, new Span<byte>(p + done, (int)Math.Min(n - done, 1 << 30)), fileOffset + done);
            if (read <= 0) throw new EndOfStreamException($"offload file ended at byte {fileOffset + done} of a {Bytes}-byte buffer.");
            done += read;
        }
    }

    unsafe void Write(Tensor source, long fileOffset)
    {
        byte* p = (byte*)TensorMemory.Pointer(source);
        long n = TensorMemory.Bytes(source);
        for (long done = 0; done < n; done += 1 << 30)
            RandomAccess.Write(file, new ReadOnlySpan<byte>(p + done, (int)Math.Min(n - done, 1 << 30)), fileOffset + done);
    }

    public override void Dispose() => file.Dispose();
}
