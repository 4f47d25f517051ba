using static TorchSharp.torch;

namespace Tern.Offloading;

/// <summary>
/// Overlap on with CPU compute: copies and jobs run in issue order on one background thread while the caller computes, so
/// the overlapped schedule's ordering is exercised for real (the tests compare it with <see cref="SynchronousTransferEngine"/>).
/// </summary>
public sealed class BackgroundTransferEngine : ITransferEngine
{
    readonly TransferWorkers workers = new(1, "tern-offload-transfers");

    /// <inheritdoc />
    public bool PinsHostMemory => false;

    /// <inheritdoc />
    public void Copy(Tensor destination, Tensor source)
    {
        if (TransferWorkers.OnWorker) CopyNow(destination, source); // a job's own copy: the job is already in order
        else Enqueue(() => CopyNow(destination, source));
    }

    static void CopyNow(Tensor destination, Tensor source)
    {
        using var to = destination.view(-1);
        using var from = source.view(-1);
        to.copy_(from);
    }

    /// <inheritdoc />
    public void Enqueue(Action job) => workers.Enqueue(job);

    /// <inheritdoc />
    public void KeepAlive(Tensor tensor) => workers.KeepAlive(tensor);

    /// <inheritdoc />
    public void Synchronize() => workers.Drain(afterJobs: null);

    /// <inheritdoc />
    public void Dispose() => workers.Dispose();
}
