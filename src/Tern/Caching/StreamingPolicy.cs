using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Caching;

/// <summary>
/// StreamingLLM (Xiao et al., ICLR 2024): attention sinks plus a rolling window. After every step each row keeps
/// [the first S tokens ever seen][the last W tokens], C = S + W entries (the paper's "S + W" cache, e.g. 4 + 2044), and
/// positions are assigned inside the cache (§3.2): a key's rotary position is its index in the cache and a new token's is the
/// number of entries before it, so a cached key at index i is attended with R(i)·k. Keys are stored before the rotary
/// embedding and rotated at their cache index every step (<see cref="KvCacheConfig.RollPositions"/>, which
/// <see cref="KvCachePolicies.Create"/> sets for this policy): exact after any number of evictions, and quantized keys are
/// never re-quantized. With S = 0 it is plain window attention, the baseline
/// that fails once the first tokens leave the cache.
/// </summary>
public sealed record StreamingPolicy : IKvCachePolicy
{
    readonly KvBudget budget;

    /// <summary>A cache of <paramref name="budget"/> entries per row, the first <paramref name="sinks"/> of them sinks;
    /// <paramref name="evictEvery"/> &gt; 1 lets the window overrun by up to that many − 1 tokens and evicts them together.</summary>
    public StreamingPolicy(KvBudget budget, int sinks, int evictEvery = 1)
    {
        KvPolicyOptions.ValidateEvictEvery(evictEvery);
        EvictEvery = evictEvery;
        if (sinks < 0) throw new OptionException($"{TernOption.KvSink} must be >= 0 (got {sinks}).");
        if (!budget.IsRatio && sinks >= budget.Tokens)
            throw new OptionException($"{TernOption.KvSink} {sinks} must be smaller than {TernOption.KvBudget} {budget}: the budget holds the sinks and a recent window of at least one token.");
        this.budget = budget;
        Sinks = sinks;
    }

    /// <summary>Eviction runs once the window has overrun the budget by this many tokens (1 = after every step, the paper's rule).</summary>
    public int EvictEvery { get; }

    /// <summary>Attention sinks kept per row.</summary>
    public int Sinks { get; }

    /// <inheritdoc />
    public string Name => Sinks == 0 ? "window" : "sink";

    /// <inheritdoc />
    public bool AppendOnly => false;

    /// <summary>Entries per row after a step, for a cache created for <paramref name="sequenceLength"/> tokens.</summary>
    public int Budget(int sequenceLength) =>
        KvCachePolicies.Resolve(budget, sequenceLength, Sinks + 1, $"{Name} with {Sinks} sinks");

    /// <inheritdoc />
    public IKvCachePolicy ForSequenceLength(int maxSequenceLength) =>
        budget.IsRatio ? new StreamingPolicy(KvBudget.OfTokens(Budget(maxSequenceLength)), Sinks, EvictEvery) : this;

    /// <inheritdoc />
    public int Capacity(int maxSequenceLength, int maxStepTokens) => Math.Min(maxSequenceLength, Budget(maxSequenceLength) + EvictEvery - 1 + maxStepTokens);

    /// <inheritdoc />
    public void BeforeAppend(LayerKvCache layer, int incomingTokens) =>
        KvCachePolicies.EnsureRoom(layer, incomingTokens, $"the {Name} policy evicts after each step down to its budget");

    /// <inheritdoc />
    public bool EvictsAfter(LayerKvCache layer, int incomingTokens) => layer.Length + incomingTokens >= Budget(layer.MaxSequenceLength) + EvictEvery;

    /// <inheritdoc />
    public bool EvictsWithoutReadBack => true; // the budget is the kept count: Keep(keep, C)

    /// <summary>Evicts, per row, everything but the sinks (original position &lt; S) and the W = C − S most recent tokens.
    /// Every row and layer follows the same rule, so the rows stay aligned unless padding made them uneven.</summary>
    /// <remarks>The kept set is a prefix plus a contiguous suffix of each row's entries. Rows without holes hold their entries
    /// in order at every slot in use, so the cache keeps slots [0, S) and the last W by moving that block down
    /// (<see cref="LayerKvCache.KeepPrefixAndSuffix"/>: one copy, its keys rotated again at their new cache index in one
    /// pass); rows made uneven by padding go through the general compaction (<see cref="LayerKvCache.Keep"/>), by position.</remarks>
    public void AfterStep(LayerKvCache layer)
    {
        if (!EvictsAfter(layer, 0)) return; // amortised: one compaction per EvictEvery tokens
        int c = Budget(layer.MaxSequenceLength);
        if (!layer.HasHoles)
        {
            layer.KeepPrefixAndSuffix(Sinks, c - Sinks);
            return;
        }
        using var scope = torch.NewDisposeScope();
        var positions = layer.ActivePositions;
        var last = positions.amax(new long[] { -1 }, keepdim: true);
        var keep = positions.lt(Sinks) | positions.gt(last - (c - Sinks));
        // At most C entries stay (distinct positions); exactly C in a row without empty slots.
        layer.Keep(keep, c);
    }
}
