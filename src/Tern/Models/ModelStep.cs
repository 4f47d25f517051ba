namespace Tern.Models;

/// <summary>
/// One forward step as a model's parts see it: the batch, and what the layers derive from it once per step rather than
/// once per layer (the rotary angles at the step's positions).
/// </summary>
internal sealed class ModelStep(ForwardBatch batch)
{
    RotaryEmbedding.RotaryStep? rotary;

    /// <summary>The step's input.</summary>
    public ForwardBatch Batch => batch;

    /// <summary>The step's rotation by <paramref name="embedding"/> (one per model), made at the first layer that asks.</summary>
    public RotaryEmbedding.RotaryStep Rotary(RotaryEmbedding embedding) => rotary ??= embedding.ForBatch(batch);
}
