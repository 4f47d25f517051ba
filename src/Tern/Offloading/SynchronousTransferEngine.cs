using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Offloading;

/// <summary>Overlap off: every copy and job runs to completion in the calling thread.</summary>
public sealed class SynchronousTransferEngine : ITransferEngine
{
    readonly List<Tensor> kept = new();

    /// <param name="pinsHostMemory">Whether host buffers are pinned (true when computing on a GPU).</param>
    public SynchronousTransferEngine(bool pinsHostMemory = false) => PinsHostMemory = pinsHostMemory;

    /// <inheritdoc />
    public bool PinsHostMemory { get; }

    /// <inheritdoc />
    public void Copy(Tensor destination, Tensor source)
    {
        // Views are disposed at once: left to the finalizer, each would keep a device buffer alive for a garbage collection.
        using var to = destination.view(-1);
        using var from = source.view(-1);
        to.copy_(from);
    }

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
