using Tern.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Offloading;

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
    readonly TransferWorkers workers;

    /// <param name="diskWorkers">Threads serving disk reads and writes.</param>
    public CudaTransferEngine(int diskWorkers = 4)
    {
        CudaDriver.EnsureContext();
        computeStream = LibTorchCuda.CurrentRawStreamOrDefault(); // where libtorch launches compute from this thread
        copyStream = CudaDriver.CreateNonBlockingStream();
        computeMark = CudaDriver.CreateEvent();
        workers = new TransferWorkers(diskWorkers, "tern-offload-disk", CudaDriver.EnsureContext);
    }

    /// <inheritdoc />
    public bool PinsHostMemory => true;

    /// <inheritdoc />
    public void Copy(Tensor destination, Tensor source)
    {
        long bytes = TensorMemory.Bytes(source);
        if (TensorMemory.Bytes(destination) != bytes || !destination.is_contiguous() || !source.is_contiguous())
            throw new ArgumentException($"copy of {bytes} bytes needs two contiguous tensors of equal size (got {TensorMemory.Bytes(destination)}).");
        if (!TransferWorkers.OnWorker)
        {
            // After the compute issued so far: its outputs are this copy's sources, its freed blocks may be this copy's target.
            CudaDriver.RecordEvent(computeMark, computeStream);
            CudaDriver.StreamWaitEvent(copyStream, computeMark);
        }
        CudaDriver.CopyAsync(TensorMemory.Pointer(destination), TensorMemory.Pointer(source), bytes, copyStream);
    }

    /// <inheritdoc />
    public void Enqueue(Action job)
    {
        // The job starts once the copies issued before it are done (its staging buffer is filled); copies the job issues
        // queue after the compute issued so far (their targets may reuse blocks that compute freed).
        CudaDriver.RecordEvent(computeMark, computeStream);
        CudaDriver.StreamWaitEvent(copyStream, computeMark);
        IntPtr after = CudaDriver.CreateEvent();
        CudaDriver.RecordEvent(after, copyStream);
        workers.Enqueue(job, before: () =>
        {
            try { CudaDriver.SynchronizeEvent(after); }
            finally { CudaDriver.DestroyEvent(after); }
        });
    }

    /// <inheritdoc />
    public void KeepAlive(Tensor tensor) => workers.KeepAlive(tensor);

    /// <inheritdoc />
    public void Synchronize() => workers.Drain(afterJobs: () =>
    {
        CudaDriver.SynchronizeStream(copyStream);
        CudaDriver.SynchronizeStream(computeStream);
    });

    /// <inheritdoc />
    public void Dispose()
    {
        try
        {
            workers.Dispose();
        }
        finally
        {
            CudaDriver.DestroyEvent(computeMark);
            CudaDriver.DestroyStream(copyStream);
        }
    }
}
