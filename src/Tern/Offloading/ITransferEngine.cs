using static TorchSharp.torch;

namespace Tern.Offloading;

/// <summary>
/// Moves data between the tiers while the compute device works: FlexGen's copy streams and disk worker pool (§1.1.2).
/// Every copy and job issued before <see cref="Synchronize"/> is complete when it returns (FlexGen's barrier); tensors handed
/// to <see cref="KeepAlive"/> live until then. Implementations: <see cref="SynchronousTransferEngine"/> (overlap off: each
/// transfer finishes before the call returns), <see cref="BackgroundTransferEngine"/> (CPU compute: one background worker),
/// and <see cref="CudaTransferEngine"/> (a CUDA copy stream, events, a disk worker pool).
/// </summary>
public interface ITransferEngine : IDisposable
{
    /// <summary>True when host buffers should be page-locked (the compute device is a GPU).</summary>
    bool PinsHostMemory { get; }

    /// <summary>Copies <paramref name="source"/> into <paramref name="destination"/> (both contiguous, same dtype and element
    /// count, either on the host or the compute device), after every copy issued before it and after the compute work issued
    /// so far on the compute device. Callable from a job. Both must stay alive until <see cref="Synchronize"/>: a view made
    /// for the copy goes to <see cref="KeepAlive"/> (left to the finalizer, it would pin its base's memory until a collection).</summary>
    void Copy(Tensor destination, Tensor source);

    /// <summary>Runs host work (disk reads and writes) after every copy issued before it.</summary>
    void Enqueue(Action job);

    /// <summary>Keeps <paramref name="tensor"/> (a transfer's source, target or staging buffer) alive until the next
    /// <see cref="Synchronize"/>, which disposes it.</summary>
    void KeepAlive(Tensor tensor);

    /// <summary>Waits for every copy, job and issued compute, then frees the kept tensors; rethrows a job's failure.</summary>
    void Synchronize();
}
