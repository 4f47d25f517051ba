using System.Collections.Concurrent;

namespace Tern.Interop;

/// <summary>
/// A second CUDA stream (from libtorch's pool) for work that may run beside the current stream's: <see cref="Begin"/> forks —
/// libtorch and Tern's kernels launch on the side stream from this thread, after everything already queued on the current one —
/// <see cref="Fork.End"/> switches back, and <see cref="Fork.Join"/> makes the current stream wait for the forked work. The order
/// is kept by events, so it holds inside CUDA graph capture too (each record/wait pair becomes an edge of the graph).
/// Memory the side stream reads must stay allocated until the join: the caching allocator may hand a freed block to the
/// current stream's next allocation while the side stream still reads it.
/// </summary>
internal sealed class SideStream : IDisposable
{
    readonly LibTorchCuda.CudaStream side;
    readonly IntPtr rawSide;
    readonly ConcurrentBag<IntPtr> events = new();
    bool disposed;

    SideStream()
    {
        CudaDriver.EnsureContext();
        side = LibTorchCuda.StreamFromPool();
        rawSide = LibTorchCuda.Raw(side);
    }

    /// <summary>A side stream for work on <paramref name="device"/>, or null where there is none to fork to (the CPU, a libtorch
    /// without the stream symbols).</summary>
    public static SideStream? For(TorchSharp.torch.Device device) =>
        device.type == TorchSharp.DeviceType.CUDA && LibTorchCuda.IsAvailable ? new SideStream() : null;

    /// <summary>Forks: until <see cref="Fork.End"/>, this thread launches on the side stream, after the work queued so far.</summary>
    public Fork Begin()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        var main = LibTorchCuda.CurrentStream();
        IntPtr forked = Take(), done = Take();
        CudaDriver.RecordEvent(forked, LibTorchCuda.Raw(main));
        CudaDriver.StreamWaitEvent(rawSide, forked);
        events.Add(forked); // the wait is queued: the event may be recorded again
        LibTorchCuda.SetCurrentStream(side);
        return new Fork(this, main, done);
    }

    IntPtr Take() => events.TryTake(out IntPtr e) ? e : CudaDriver.CreateEvent();

    /// <summary>Destroys the events (libtorch owns the stream).</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        while (events.TryTake(out IntPtr e)) CudaDriver.DestroyEvent(e);
    }

    /// <summary>Work forked onto the side stream: ended (launches go back to the stream it forked from), then joined.</summary>
    public sealed class Fork
    {
        readonly SideStream owner;
        readonly LibTorchCuda.CudaStream main;
        IntPtr done;
        bool ended;

        internal Fork(SideStream owner, LibTorchCuda.CudaStream main, IntPtr done) => (this.owner, this.main, this.done) = (owner, main, done);

        /// <summary>Marks the end of the forked work and launches on the forking stream again.</summary>
        public void End()
        {
            if (ended) return;
            ended = true;
            CudaDriver.RecordEvent(done, owner.rawSide);
            LibTorchCuda.SetCurrentStream(main);
        }

        /// <summary>Makes the forking stream's later work wait for the forked work (ends it first if needed). Once only.</summary>
        public void Join()
        {
            if (done == IntPtr.Zero) return;
            End();
            CudaDriver.StreamWaitEvent(LibTorchCuda.Raw(main), done);
            if (owner.disposed) CudaDriver.DestroyEvent(done);
            else owner.events.Add(done);
            done = IntPtr.Zero;
        }
    }
}
