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
    readonly BlockingCollection<Action> queue = new();
    readonly Thread worker;
    readonly List<Tensor> kept = new();
    readonly object gate = new();
    int pending;
    Exception? failure;
    [ThreadStatic] static bool onWorker;

    /// <summary>Starts the worker.</summary>
    public BackgroundTransferEngine()
    {
        worker = new Thread(Work) { IsBackground = true, Name = "tern-offload-transfers" };
        worker.Start();
    }

    /// <inheritdoc />
    public bool PinsHostMemory => false;

    /// <inheritdoc />
    public void Copy(Tensor destination, Tensor source)
    {
        if (onWorker) destination.view(-1).copy_(source.view(-1)); // a job's own copy: the job is already in order
        else Enqueue(() => destination.view(-1).copy_(source.view(-1)));
    }

    /// <inheritdoc />
    public void Enqueue(Action job)
    {
        lock (gate) pending++;
        queue.Add(job);
    }

    void Work()
    {
        onWorker = true;
        foreach (var job in queue.GetConsumingEnumerable())
        {
            try
            {
                if (failure is null) job();
            }
            catch (Exception e)
            {
                failure ??= e;
            }
            lock (gate)
            {
                pending--;
                Monitor.PulseAll(gate);
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
        foreach (var t in kept) t.Dispose();
        kept.Clear();
        if (failure is { } e)
        {
            failure = null;
            throw new IOException($"offloading transfer failed: {e.Message}", e);
        }
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
            worker.Join();
            queue.Dispose();
        }
    }
}
