using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// One forward step's input: token ids [batch, tokens] and their positions [batch, tokens] (-1 marks left padding),
/// with host-side facts that spare the model device synchronisation.
/// </summary>
public sealed class ForwardBatch
{
    /// <summary>Token ids, int64 [batch, tokens], on the model's device.</summary>
    public required Tensor InputIds { get; init; }

    /// <summary>Original positions, int64 [batch, tokens], -1 for padding, on the model's device.</summary>
    public required Tensor Positions { get; init; }

    /// <summary>Real (non-padding) tokens of each sequence in this step.</summary>
    public required IReadOnlyList<int> RealTokens { get; init; }

    /// <summary>True when any position is -1.</summary>
    public bool HasPadding { get; init; }

    /// <summary>Largest position in the batch (host-known), used to size rotary and position tables.</summary>
    public required int MaxPosition { get; init; }

    /// <summary>When true the model returns logits of the last position only, [batch, vocab]; else [batch, tokens, vocab].</summary>
    public bool LastPositionOnly { get; init; }

    /// <summary>
    /// Static-shape mode (CUDA-graph capture): the cache slot, int64 [tokens] on the device, where this step's entries go.
    /// The step then writes through an index held on the device and attends over the whole preallocated cache with a mask,
    /// so the same kernels with the same shapes serve every step.
    /// </summary>
    public Tensor? WriteSlots { get; init; }

    /// <summary>The attention mask of a static-shape step, computed by the first layer and reused by the others when the
    /// cache policy keeps layers aligned; keyed by the sliding window it was made for. Owned by the step's dispose scope.</summary>
    internal (int Window, Tensor Mask)? SharedMask { get; set; }
}
