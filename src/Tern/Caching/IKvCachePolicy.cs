namespace Tern.Caching;

/// <summary>
/// Decides what a <see cref="KvCache"/> keeps, and nothing else: how entries are stored and positioned is the cache's
/// (<see cref="KvCacheConfig"/>). The cache calls these hooks and a policy evicts through <see cref="LayerKvCache.Keep"/> (any
/// kept set), <see cref="LayerKvCache.KeepPrefixAndSuffix"/> (a prefix and a contiguous suffix of rows without holes: a shift)
/// or <see cref="LayerKvCache.EmptySlots"/> (in place).
/// Every policy must keep the contract tested by <c>KvCachePolicyContract</c>: entries it keeps are bit-identical to what was
/// appended and keep their original positions; with a budget that covers the whole sequence it gives the same logits as
/// <see cref="DensePolicy"/>.
/// </summary>
public interface IKvCachePolicy
{
    /// <summary>Short name, as on the command line ("full", "sink", "h2o", ...).</summary>
    string Name { get; }

    /// <summary>True when the policy never evicts: slots fill in order and every layer holds the same positions in the same
    /// slots. Then decode steps can run with static shapes (CUDA graphs) and layers can share one attention mask.</summary>
    bool AppendOnly { get; }

    /// <summary>Slots to preallocate per layer for sequences of at most <paramref name="maxSequenceLength"/> tokens
    /// processed in steps of at most <paramref name="maxStepTokens"/> tokens.</summary>
    int Capacity(int maxSequenceLength, int maxStepTokens);

    /// <summary>Called before <paramref name="incomingTokens"/> new entries are appended to a layer: evict here so they fit.</summary>
    void BeforeAppend(LayerKvCache layer, int incomingTokens);

    /// <summary>Called after a layer's attention in every step: the policy may evict entries now.</summary>
    void AfterStep(LayerKvCache layer);

    /// <summary>True when a step appending <paramref name="incomingTokens"/> entries to <paramref name="layer"/> ends in an
    /// eviction (<see cref="AfterStep"/> compacts). Steps that do not can replay as a CUDA graph whatever the policy; the
    /// generator runs the others eagerly.</summary>
    bool EvictsAfter(LayerKvCache layer, int incomingTokens) => false;

    /// <summary>True when <see cref="AfterStep"/>'s eviction reads nothing back from the device (every count it needs is known
    /// on the host), so a step that ends in it can be captured as a CUDA graph and replayed when it recurs in the same state.</summary>
    bool EvictsWithoutReadBack => false;

    /// <summary>True when a step appending <paramref name="incomingTokens"/> entries to <paramref name="layer"/> writes each row's
    /// and head's entry into a free slot below <see cref="LayerKvCache.Length"/> (one the policy emptied in place) instead of
    /// at the end: the layer's length, hence every shape of the step, stays the same, so an evicting policy's steady-state
    /// steps replay as CUDA graphs.</summary>
    bool FillsFreeSlots(LayerKvCache layer, int incomingTokens) => false;

    /// <summary>This policy with budgets given as ratios resolved to token counts for sequences of at most
    /// <paramref name="maxSequenceLength"/> tokens (the same policy when its budgets are counts): what a cache shared by
    /// sequences of different lengths (a serving pool) runs, so each behaves as in a cache of its own.</summary>
    IKvCachePolicy ForSequenceLength(int maxSequenceLength) => this;
}
