namespace Tern.Caching;

/// <summary>
/// What a generation or a request asks of its KV cache: the policy that evicts, the bits each entry is stored in and whether
/// tokens are positioned by their index in the cache. A record compared by value: serving pools group requests by their
/// configuration resolved for their length (<see cref="ForSequenceLength"/>). <see cref="KvCachePolicies.Create"/> builds one
/// by policy name.
/// </summary>
public sealed record KvCacheConfig
{
    /// <summary>The full 16-bit cache, what a generation gets when it asks for nothing else.</summary>
    public static KvCacheConfig Full { get; } = new();

    /// <summary>A configuration evicting by <paramref name="eviction"/> (null: <see cref="DensePolicy"/>).</summary>
    public KvCacheConfig(IKvCachePolicy? eviction = null, int bits = 16, bool rollPositions = false)
    {
        Eviction = eviction ?? DensePolicy.Instance;
        Bits = bits;
        RollPositions = rollPositions;
    }

    /// <summary>The policy deciding which entries stay.</summary>
    public IKvCachePolicy Eviction { get; init; }

    /// <summary>Bits per stored key/value element: 16 keeps the model's dtype, 8 or 4 store them group-quantized
    /// (<see cref="KvCacheOptions.Bits"/>), as FlexGen compresses its cache.</summary>
    public int Bits
    {
        get;
        init
        {
            KvPolicyOptions.ValidateBits(value);
            field = value;
        }
    }

    /// <summary>
    /// StreamingLLM's position rolling (§3.2): a new token gets the number of entries its row holds before it, and keys are
    /// stored before the rotary embedding and rotated by their current cache index at every step, so eviction never shifts a
    /// stored key and positions stay below the cache's capacity however long the sequence grows. The sink and window policies
    /// run with it; the index is read from one layer and KV head, so it suits policies that evict alike in all of them.
    /// </summary>
    public bool RollPositions { get; init; }

    /// <summary>This configuration with the eviction's ratio budgets resolved for sequences of at most
    /// <paramref name="maxSequenceLength"/> tokens (<see cref="IKvCachePolicy.ForSequenceLength"/>).</summary>
    public KvCacheConfig ForSequenceLength(int maxSequenceLength) => this with { Eviction = Eviction.ForSequenceLength(maxSequenceLength) };

    /// <summary>Allocates a cache of <paramref name="shape"/> stored and evicted as this configuration says.</summary>
    public KvCache CreateCache(KvCacheOptions shape) => KvCache.Create(shape with { Bits = Bits, RollPositions = RollPositions }, Eviction);
}
