using System.Collections.Concurrent;
using Tern.Offloading;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Interop;

/// <summary>
/// FlexGen's overlapped transfers on a CUDA device (§1.1.2), which TorchSharp cannot express: one non-blocking copy stream
/// (driver API) for host↔device copies of pinned buffers, ordered after the compute issued so far by an event the copy
/// stream waits on; a pool of worker threads for disk reads and writes (FlexGen uses 4), each job starting after the copies
/// issued before it (an event recorded on the copy stream). <see cref="Synchronize"/> drains the jobs, the copy stream and
/// the compute stream: the barrier at the end of each schedule step.
/// </summary>
internal sealed class CudaTransferEngine : ITransferEngine
{
    readonly IntPtr copyStream, computeStream, computeMark;
    readonly BlockingCollection<(Action Job, IntPtr After)> queue = new();
    readonly Thread[] workers;
    readonly List<Tensor> kept = new();
    readonly object gate = new();
    int pending;
    Exception? failure;
    [ThreadStatic] static bool onWorker;

    /// <param name="diskWorkers">Threads serving disk reads and writes.</param>
    public CudaTransferEngine(int diskWorkers = 4)
    {
        CudaDriver.EnsureContext();
        // The stream libtorch launches compute on from this thread (the legacy default stream when no symbol is reachable).
        computeStream = LibTorchCuda.IsAvailable ? LibTorchCuda.CurrentRawStream() : IntPtr.Zero;
        copyStream = CudaDriver.CreateNonBlockingStream();
        computeMark = CudaDriver.CreateEvent();
        workers = Enumerable.Range(0, diskWorkers).Select(i => new Thread(Work) { IsBackground = true, Name = $"tern-offload-disk-{i}" }).ToArray();
        foreach (var w in workers) w.Start();
    }

    /// <inheritdoc />
    public bool PinsHostMemory => true;

    /// <inheritdoc />
    public void Copy(Tensor destination, Tensor source)
    {
        long bytes = TensorMemory.Bytes(source);
        if (TensorMemory.Bytes(destination) != bytes || !destination.is_contiguous() || !source.is_contiguous())
            throw new ArgumentException($"copy of {bytes} bytes needs two contiguous tensors of equal size (got {TensorMemory.Bytes(destination)}).");
        if (!onWorker)
        {
            // After the compute issued so far: its outputs are this copy's sources, its freed blocks may be this copy's target.
            CudaDriver.RecordEvent(computeMark, computeStream);
            CudaDriver.StreamWaitEvent(copyStream, computeMark);
        }
        else CudaDriver.EnsureContext();
        CudaDriver.CopyAsync(TensorMemory.Pointer(destination), TensorMemory.Pointer(source), bytes, copyStream);
    }

    /// <inheritdoc />
    public void Enqueue(Action job)
    {
        IntPtr after = CudaDriver.CreateEvent();
        CudaDriver.RecordEvent(after, copyStream);
        lock (gate) pending++;
        queue.Add((job, after));
    }

    void Work()
    {
        onWorker = true;
        CudaDriver.EnsureContext();
        foreach (var (job, after) in queue.GetConsumingEnumerable())
        {
            try
            {
                CudaDriver.SynchronizeEvent(after);
                if (failure is null) job();
            }
            catch (Exception e)
            {
                lock (gate) failure ??= e;
            }
            finally
            {
                CudaDriver.DestroyEvent(after);
                lock (gate)
                {
                    pending--;
                    Monitor.PulseAll(gate);
                }
            }
        }
    }

    /// <inheritdoc />
    public void KeepAlive(Tensor tensor) => kept.Add(tensor);

    /// <inheritdoc />
    public void Synchronize()
    {
        lock (gate)
            while (pending > 0) Monitor.Wait(gate);
        CudaDriver.SynchronizeStream(copyStream);
        CudaDriver.SynchronizeStream(computeStream);
        foreach (var t in kept) t.Dispose();
        kept.Clear();
        Exception? e;
        lock (gate) (e, failure) = (failure, null);
        if (e is not null) throw new IOException($"offloading transfer failed: {e.Message}", e);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        try
        {
            Synchronize();
        }
        finally
        {
            queue.CompleteAdding();
            foreach (var w in workers) w.Join();
            queue.Dispose();
            CudaDriver.DestroyEvent(computeMark);
            CudaDriver.DestroyStream(copyStream);
        }
    }
}
