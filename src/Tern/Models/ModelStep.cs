using Tern.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// One forward step as a model's parts see it: the batch, and what the layers derive from it once per step rather than
/// once per layer (the rotary angles at the step's positions, a static-shape step's attention mask).
/// </summary>
internal sealed class ModelStep(ForwardBatch batch, ISparsityStep? sparsity = null) : IDisposable
{
    RotaryEmbedding.RotaryStep? rotary;

    /// <summary>The step's input.</summary>
    public ForwardBatch Batch => batch;

    /// <summary>Which MLP neurons and attention heads the layers compute (DejaVu); null: every one.</summary>
    public ISparsityStep? Sparsity => sparsity;

    /// <summary>The step's rotation by <paramref name="embedding"/> (one per model), made at the first layer that asks.</summary>
    public RotaryEmbedding.RotaryStep Rotary(RotaryEmbedding embedding) => rotary ??= embedding.ForBatch(batch);

    /// <summary>0 … <paramref name="count"/> − 1 (int64 on <paramref name="device"/>), made at the first layer that asks and reused by
    /// the others; owned by the step (freed by <see cref="Dispose"/>), outside every dispose scope.</summary>
    public Tensor Offsets(int count, Device device)
    {
        if (offsets is { } o && o.size(0) == count && TensorMemory.IsOn(o, device)) return o;
        offsets?.Dispose();
        return offsets = torch.arange(count, ScalarType.Int64, device).DetachFromDisposeScope();
    }

    Tensor? offsets;

    /// <summary>Frees what the step made for its layers (<see cref="Offsets"/>).</summary>
    public void Dispose()
    {
        offsets?.Dispose();
        offsets = null;
    }

    /// <summary>The attention mask of a static-shape step, made by the first layer and reused by the others when the cache
    /// policy keeps layers aligned; keyed by the sliding window it was made for. Owned by the step's dispose scope.</summary>
    public (int Window, Tensor Mask)? SharedMask { get; set; }
}
