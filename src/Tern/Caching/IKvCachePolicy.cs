namespace Tern.Caching;

/// <summary>
/// Decides what a <see cref="KvCache"/> keeps. The generation loop and the models know no policy by name: they call these
/// hooks, and a policy evicts through <see cref="LayerKvCache.Keep"/>. Every policy must keep the contract tested by
/// <c>KvCachePolicyContract</c>: entries it keeps are bit-identical to what was appended and keep their original positions;
/// with a budget that covers the whole sequence it gives the same logits as <see cref="DensePolicy"/>.
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

    /// <summary>Bits per stored key/value element: 16 keeps the model's dtype, 8 or 4 store them group-quantized
    /// (<see cref="KvCacheOptions.Bits"/>). Part of the policy as in FlexGen, whose policy includes cache compression.</summary>
    int Bits => 16;

    /// <summary>
    /// True when the model must position tokens by their index in the cache rather than in the text (StreamingLLM's
    /// "position rolling"): a new token gets the number of entries its row holds before it, and keys are stored before the
    /// rotary embedding and rotated by their current cache index at every step, so eviction never shifts a stored key.
    /// Positions then stay below the cache's capacity however long the sequence grows.
    /// </summary>
    bool PositionsFollowCache => false;

    /// <summary>
    /// The seam for StreamingLLM's "sliding window with re-computation" baseline: before a step that would make the longest
    /// sequence <paramref name="sequenceLength"/> tokens long, the generator (of sequences of at most
    /// <paramref name="maxSequenceLength"/> tokens, what a ratio window is a ratio of) asks how many of the last tokens of each
    /// sequence to re-run through the cleared cache (their positions starting at 0), instead of appending the step's tokens;
    /// 0 appends as usual.
    /// </summary>
    int RecomputeWindow(int maxSequenceLength, int sequenceLength) => 0;

    /// <summary>This policy with budgets given as ratios resolved to token counts for sequences of at most
    /// <paramref name="maxSequenceLength"/> tokens (the same policy when its budgets are counts): what a cache shared by
    /// sequences of different lengths (a serving pool) runs, so each behaves as in a cache of its own.</summary>
    IKvCachePolicy ForSequenceLength(int maxSequenceLength) => this;
}
