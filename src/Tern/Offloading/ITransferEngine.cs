using System.Collections.Concurrent;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Offloading;

/// <summary>
/// Moves data between the tiers while the compute device works: FlexGen's copy streams and disk worker pool (§1.1.2).
/// Every copy and job issued before <see cref="Synchronize"/> is complete when it returns (FlexGen's barrier); tensors handed
/// to <see cref="KeepAlive"/> live until then. Implementations: <see cref="SynchronousTransferEngine"/> (overlap off: each
/// transfer finishes before the call returns), <see cref="BackgroundTransferEngine"/> (CPU compute: one background worker),
/// and <c>Interop.CudaTransferEngine</c> (a CUDA copy stream, events, a disk worker pool).
/// </summary>
public interface ITransferEngine : IDisposable
{
    /// <summary>True when host buffers should be page-locked (the compute device is a GPU).</summary>
    bool PinsHostMemory { get; }

    /// <summary>Copies <paramref name="source"/> into <paramref name="destination"/> (both contiguous, same dtype and element
    /// count, either on the host or the compute device), after every copy issued before it and after the compute work issued
    /// so far on the compute device. Callable from a job.</summary>
    void Copy(Tensor destination, Tensor source);

    /// <summary>Runs host work (disk reads and writes) after every copy issued before it.</summary>
    void Enqueue(Action job);

    /// <summary>Keeps <paramref name="tensor"/> (a transfer's source, target or staging buffer) alive until the next
    /// <see cref="Synchronize"/>, which disposes it.</summary>
    void KeepAlive(Tensor tensor);

    /// <summary>Waits for every copy, job and issued compute, then frees the kept tensors; rethrows a job's failure.</summary>
    void Synchronize();
}

/// <summary>Overlap off: every copy and job runs to completion in the calling thread.</summary>
public sealed class SynchronousTransferEngine : ITransferEngine
{
    readonly List<Tensor> kept = new();

    /// <param name="pinsHostMemory">Whether host buffers are pinned (true when computing on a GPU).</param>
    public SynchronousTransferEngine(bool pinsHostMemory = false) => PinsHostMemory = pinsHostMemory;

    /// <inheritdoc />
    public bool PinsHostMemory { get; }

    /// <inheritdoc />
    public void Copy(Tensor destination, Tensor source) => destination.view(-1).copy_(source.view(-1));

    /// <inheritdoc />
    public void Enqueue(Action job) => job();

    /// <inheritdoc />
    public void KeepAlive(Tensor tensor) => kept.Add(tensor);

    /// <inheritdoc />
    public void Synchronize()
    {
        if (PinsHostMemory) torch.cuda.synchronize();
        foreach (var t in kept) t.Dispose();
        kept.Clear();
    }

    /// <inheritdoc />
    public void Dispose() => Synchronize();
}

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
        if (TransferWorkers.OnWorker) destination.view(-1).copy_(source.view(-1)); // a job's own copy: the job is already in order
        else Enqueue(() => destination.view(-1).copy_(source.view(-1)));
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

/// <summary>
/// Worker threads serving an engine's host jobs in order of issue (one thread: strictly in order), the count of jobs in
/// flight, the first failure (rethrown by <see cref="Drain"/>, later jobs skipped) and the tensors kept alive until then.
/// </summary>
internal sealed class TransferWorkers : IDisposable
{
    readonly BlockingCollection<(Action Job, Action? Before)> queue = new();
    readonly Thread[] threads;
    readonly List<Tensor> kept = new();
    readonly object gate = new();
    int pending;
    Exception? failure;
    [ThreadStatic] static bool onWorker;

    /// <param name="count">Threads.</param>
    /// <param name="name">Thread name prefix.</param>
    /// <param name="start">Runs first on each thread (a CUDA context).</param>
    public TransferWorkers(int count, string name, Action? start = null)
    {
        threads = Enumerable.Range(0, count).Select(i => new Thread(() => Work(start)) { IsBackground = true, Name = $"{name}-{i}" }).ToArray();
        foreach (var t in threads) t.Start();
    }

    /// <summary>True on a worker thread.</summary>
    public static bool OnWorker => onWorker;

    /// <summary>Queues <paramref name="job"/>, preceded on its thread by <paramref name="before"/> (run even after a failure).</summary>
    public void Enqueue(Action job, Action? before = null)
    {
        lock (gate) pending++;
        queue.Add((job, before));
    }

    public void KeepAlive(Tensor tensor) => kept.Add(tensor);

    void Work(Action? start)
    {
        onWorker = true;
        start?.Invoke();
        foreach (var (job, before) in queue.GetConsumingEnumerable())
        {
            try
            {
                before?.Invoke();
                if (failure is null) job();
            }
            catch (Exception e)
            {
                lock (gate) failure ??= e;
            }
            finally
            {
                lock (gate)
                {
                    pending--;
                    Monitor.PulseAll(gate);
                }
            }
        }
    }

    /// <summary>Waits for every job, runs <paramref name="afterJobs"/> (waiting for device work), frees the kept tensors and
    /// rethrows the first failure.</summary>
    public void Drain(Action? afterJobs)
    {
        lock (gate)
            while (pending > 0) Monitor.Wait(gate);
        afterJobs?.Invoke();
        foreach (var t in kept) t.Dispose();
        kept.Clear();
        Exception? e;
        lock (gate) (e, failure) = (failure, null);
        if (e is not null) throw new IOException($"offloading transfer failed: {e.Message}", e);
    }

    public void Dispose()
    {
        try
        {
            Drain(afterJobs: null);
        }
        finally
        {
            queue.CompleteAdding();
            foreach (var t in threads) t.Join();
            queue.Dispose();
        }
    }
}
