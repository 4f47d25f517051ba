using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// One forward step as a model's parts see it: the batch, and what the layers derive from it once per step rather than
/// once per layer (the rotary angles at the step's positions, a static-shape step's attention mask).
/// </summary>
internal sealed class ModelStep(ForwardBatch batch, ISparsityStep? sparsity = null)
{
    RotaryEmbedding.RotaryStep? rotary;

    /// <summary>The step's input.</summary>
    public ForwardBatch Batch => batch;

    /// <summary>Which MLP neurons and attention heads the layers compute (DejaVu); null: every one.</summary>
    public ISparsityStep? Sparsity => sparsity;

    /// <summary>The step's rotation by <paramref name="embedding"/> (one per model), made at the first layer that asks.</summary>
    public RotaryEmbedding.RotaryStep Rotary(RotaryEmbedding embedding) => rotary ??= embedding.ForBatch(batch);

    /// <summary>The attention mask of a static-shape step, made by the first layer and reused by the others when the cache
    /// policy keeps layers aligned; keyed by the sliding window it was made for. Owned by the step's dispose scope.</summary>
    public (int Window, Tensor Mask)? SharedMask { get; set; }
}
