namespace Tern.Caching;

/// <summary>The full cache: keeps every entry; the reference every other policy is held against. With 8 or 4 bits it is
/// FlexGen's compressed cache: every entry kept, group-quantized.</summary>
public sealed record DensePolicy : IKvCachePolicy
{
    /// <summary>The shared 16-bit instance (the policy holds no state).</summary>
    public static DensePolicy Instance { get; } = new();

    /// <summary>A full cache storing <paramref name="bits"/> per element (16, 8 or 4).</summary>
    public DensePolicy(int bits = 16)
    {
        KvPolicyOptions.ValidateBits(bits);
        Bits = bits;
    }

    /// <inheritdoc />
    public string Name => "full";

    /// <inheritdoc />
    public int Bits { get; }

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
