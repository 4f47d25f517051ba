using static TorchSharp.torch;

namespace Tern.KvCache;

/// <summary>The full cache: keeps every entry; the reference every other policy is held against.</summary>
public sealed class DensePolicy : IKvCachePolicy
{
    /// <summary>The shared instance (the policy holds no state).</summary>
    public static DensePolicy Instance { get; } = new();

    /// <inheritdoc />
    public string Name => "full";

    /// <inheritdoc />
    public bool NeedsAttentionProbabilities => false;

    /// <inheritdoc />
    public bool AppendOnly => true;

    /// <inheritdoc />
    public int Capacity(int maxSequenceLength, int maxStepTokens) => maxSequenceLength;

    /// <inheritdoc />
    public void BeforeAppend(LayerKvCache layer, int incomingTokens)
    {
        if (layer.Length + incomingTokens > layer.Capacity)
            throw new InvalidOperationException(
                $"KV cache of layer {layer.Layer} is full: {layer.Length} + {incomingTokens} entries exceed its {layer.Capacity} slots " +
                "(the full policy never evicts; create the cache for the whole sequence length).");
    }

    /// <inheritdoc />
    public void ObserveAttention(LayerKvCache layer, Tensor probabilities) { }

    /// <inheritdoc />
    public void AfterStep(LayerKvCache layer) { }
}
