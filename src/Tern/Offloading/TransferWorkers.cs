using System.Collections.Concurrent;
using static TorchSharp.torch;

namespace Tern.Offloading;

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
