namespace Tern.Caching;

/// <summary>The full cache: keeps every entry; the reference every other policy is held against. Over 8 or 4 bits
/// (<see cref="KvCacheConfig.Bits"/>) it is FlexGen's compressed cache: every entry kept, group-quantized.</summary>
public sealed record DensePolicy : IKvCachePolicy
{
    /// <summary>The one instance (the policy holds no state).</summary>
    public static DensePolicy Instance { get; } = new();

    DensePolicy() { }

    /// <inheritdoc />
    public string Name => "full";

    /// <inheritdoc />
    public bool AppendOnly => true;

    /// <inheritdoc />
    public int Capacity(int maxSequenceLength, int maxStepTokens) => maxSequenceLength;

    /// <inheritdoc />
    public void BeforeAppend(LayerKvCache layer, int incomingTokens) =>
        KvCachePolicies.EnsureRoom(layer, incomingTokens, "the full policy never evicts; create the cache for the whole sequence length");

    /// <inheritdoc />
    public void AfterStep(LayerKvCache layer) { }
}
