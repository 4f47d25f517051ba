namespace Tern.Caching;

/// <summary>
/// StreamingLLM's "sliding window with re-computation" baseline (Xiao et al. 2024, Fig. 1b): every token is predicted from
/// the last W tokens only, re-encoded from scratch (positions 0 … W−1) at every step, O(T·W²) in all. The policy never
/// evicts; through <see cref="RecomputeWindow"/> it asks the generator to clear the cache and re-run the window once a
/// sequence outgrows it. The cache is allocated for the whole sequence, like the full cache.
/// </summary>
public sealed record WindowRecomputePolicy : IKvCachePolicy
{
    readonly KvBudget window;

    /// <summary>A window of <paramref name="window"/> tokens.</summary>
    public WindowRecomputePolicy(KvBudget window, int bits = 16)
    {
        KvPolicyOptions.ValidateBits(bits);
        this.window = window;
        Bits = bits;
    }

    /// <inheritdoc />
    public string Name => "window-recompute";

    /// <inheritdoc />
    public int Bits { get; }

    /// <summary>False: the generator clears and refills the cache, which static-shape steps cannot follow.</summary>
    public bool AppendOnly => false;

    /// <inheritdoc />
    public int Capacity(int maxSequenceLength, int maxStepTokens)
    {
        Window(maxSequenceLength); // refuse an empty window before anything runs
        return maxSequenceLength;
    }

    /// <inheritdoc />
    public IKvCachePolicy ForSequenceLength(int maxSequenceLength) =>
        window.IsRatio ? new WindowRecomputePolicy(KvBudget.OfTokens(Window(maxSequenceLength)), Bits) : this;

    /// <summary>The window for a cache created for <paramref name="sequenceLength"/> tokens.</summary>
    public int Window(int sequenceLength) =>
        KvCachePolicies.Resolve(window, sequenceLength, 1, Name);

    /// <inheritdoc />
    public int RecomputeWindow(int maxSequenceLength, int sequenceLength)
    {
        int w = Window(maxSequenceLength);
        return sequenceLength > w ? w : 0;
    }

    /// <inheritdoc />
    public void BeforeAppend(LayerKvCache layer, int incomingTokens) =>
        KvCachePolicies.EnsureRoom(layer, incomingTokens, "window-recompute never evicts; the generator re-runs the window instead");

    /// <inheritdoc />
    public void AfterStep(LayerKvCache layer) { }
}
