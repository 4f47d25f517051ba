using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Caching;

/// <summary>
/// H2O, the Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023), as its real-drop reference (§2.1.1 B): per layer, sequence and
/// KV head, every cached token j accumulates the attention it receives, F(j) ← F(j) + Σ a(j) over the step's queries (in
/// fp32); once a row holds more than k = k_h + k_r entries, the k_r most recent tokens stay and, among the older ones, the
/// k_h with the largest F; the rest are evicted for good (scores discarded). The prefill attends densely over the prompt,
/// takes F as the column sums of its probabilities and compresses once to k.
/// Choices (documented deviations): under grouped-query attention the probabilities of a KV head's query heads are summed
/// (a mean would rank the same: it divides a whole row by the group size); eviction is per sequence, not summed over the
/// batch; F counts the post-eviction probabilities, as the real-drop code does; padding queries count nothing. Keys keep
/// their original positions (stored after rotary embedding), so nothing is re-rotated.
/// With eviction after every step the cache reaches a steady state of k + 1 slots: each one-token step writes its entry into
/// the slot its row and head freed last, and the eviction empties the lowest-scoring slot in place (no compaction), so the
/// step's shapes never change and it replays as a CUDA graph. Slot order is then not position order (attention masks by
/// position and is order-free).
/// </summary>
public sealed record HeavyHitterPolicy : IKvCachePolicy, IAttentionObserver
{
    readonly KvBudget budget;
    readonly KvBudget? recent;

    /// <summary>A cache of <paramref name="budget"/> entries per row, <paramref name="recent"/> of them (default half) the
    /// most recent tokens; with <paramref name="normalizeScores"/> tokens rank by mean rather than summed attention;
    /// <paramref name="evictEvery"/> &gt; 1 lets the cache overrun the budget by up to that many − 1 tokens and evicts them
    /// together (FlexGen's amortised variant; scores keep accumulating meanwhile).</summary>
    public HeavyHitterPolicy(KvBudget budget, KvBudget? recent = null, bool normalizeScores = false, int evictEvery = 1)
    {
        KvPolicyOptions.ValidateEvictEvery(evictEvery);
        this.budget = budget;
        this.recent = recent;
        NormalizeScores = normalizeScores;
        EvictEvery = evictEvery;
    }

    /// <summary>Eviction runs once the cache has overrun the budget by this many tokens (1 = after every step, the paper's rule).</summary>
    public int EvictEvery { get; }

    /// <summary>True when tokens rank by their attention per query that saw them (off in the reference).</summary>
    public bool NormalizeScores { get; }

    /// <inheritdoc />
    public string Name => "h2o";

    /// <inheritdoc />
    public bool AppendOnly => false;

    /// <summary>The budget k and recent window k_r for a cache created for <paramref name="sequenceLength"/> tokens.</summary>
    public (int Budget, int Recent) Sizes(int sequenceLength)
    {
        int k = KvCachePolicies.Resolve(budget, sequenceLength, 1, Name);
        int r = recent is { } given ? given.Resolve(sequenceLength) : k / 2;
        if (r > k) throw new OptionException($"{TernOption.KvRecent} {recent} gives {r} entries, more than the {k} of {TernOption.KvBudget} {budget}.");
        return (k, r);
    }

    /// <inheritdoc />
    public IKvCachePolicy ForSequenceLength(int maxSequenceLength)
    {
        if (!budget.IsRatio && recent is not { IsRatio: true }) return this;
        var (k, r) = Sizes(maxSequenceLength);
        return new HeavyHitterPolicy(KvBudget.OfTokens(k), KvBudget.OfTokens(r), NormalizeScores, EvictEvery);
    }

    /// <inheritdoc />
    public int Capacity(int maxSequenceLength, int maxStepTokens) => Math.Min(maxSequenceLength, Sizes(maxSequenceLength).Budget + EvictEvery - 1 + maxStepTokens);

    /// <inheritdoc />
    public void BeforeAppend(LayerKvCache layer, int incomingTokens) =>
        KvCachePolicies.EnsureRoom(layer, incomingTokens, "h2o evicts after each step down to its budget");

    /// <summary>Adds the step's probabilities [B,H,T,L] to each entry's score, summed over the step's queries and the query
    /// heads of each KV head; with normalisation also counts the queries that saw the entry.</summary>
    public void ObserveAttention(LayerKvCache layer, Tensor probabilities)
    {
        using var scope = torch.NewDisposeScope();
        var state = layer.EntryState(2); // per entry: accumulated attention, queries that saw it
        long b = probabilities.size(0), h = probabilities.size(1), t = probabilities.size(2), l = probabilities.size(3);
        long kvHeads = state.size(1), groups = h / kvHeads;
        var grouped = probabilities.view(b, kvHeads, groups, t, l);
        state.select(-1, 0).narrow(2, 0, l).add_(grouped.sum(new long[] { 2, 3 }));
        if (NormalizeScores) // a query saw the entry when it gave it any probability (masked slots get exactly 0)
            state.select(-1, 1).narrow(2, 0, l).add_(grouped.select(2, 0).gt(0).sum(2).to(ScalarType.Float32));
    }

    /// <inheritdoc />
    public bool EvictsAfter(LayerKvCache layer, int incomingTokens) =>
        !FillsFreeSlots(layer, incomingTokens) && layer.Length + incomingTokens >= Sizes(layer.MaxSequenceLength).Budget + EvictEvery;

    /// <summary>The steady state of eviction after every step: k + 1 slots in use, each row and head holding at most k entries
    /// before the step, so a free slot waits below the length for the one new entry.</summary>
    public bool FillsFreeSlots(LayerKvCache layer, int incomingTokens) =>
        EvictEvery == 1 && incomingTokens == 1 && layer.Length == Sizes(layer.MaxSequenceLength).Budget + 1;

    /// <summary>Keeps the k_r most recent entries and the k − k_r older ones with the largest scores: in place when at most one
    /// entry per row and head is over the budget (<see cref="FillsFreeSlots"/>), else by compaction.</summary>
    public void AfterStep(LayerKvCache layer)
    {
        if (layer.Length < Sizes(layer.MaxSequenceLength).Budget + EvictEvery) return; // amortised: one eviction per EvictEvery tokens
        var (k, r) = Sizes(layer.MaxSequenceLength);
        using var scope = torch.NewDisposeScope();
        var state = layer.EntryState(2);
        var positions = layer.ActivePositions;
        var occupied = positions.ge(0);
        var last = positions.amax(new long[] { -1 }, keepdim: true);
        var isRecent = occupied & positions.gt(last - r);
        var candidates = occupied & isRecent.logical_not();
        var scores = state.narrow(2, 0, layer.Length);
        var rank = NormalizeScores ? scores.select(-1, 0) / scores.select(-1, 1).clamp_min(1) : scores.select(-1, 0);
        if (EvictEvery == 1 && layer.Length == k + 1)
        {
            // One entry over at most: a row and head holding k + 1 evicts its lowest-ranked candidate, F(j) smallest (§2.1.1).
            var victim = rank.masked_fill(candidates.logical_not(), double.PositiveInfinity).argmin(-1, keepdim: true);
            layer.EmptySlots(victim, occupied.sum(-1, keepdim: true).gt(k));
            return;
        }
        var keep = isRecent;
        int heavy = Math.Min(k - r, layer.Length);
        if (heavy > 0)
        {
            var top = rank.masked_fill(candidates.logical_not(), double.NegativeInfinity).topk(heavy, -1).indexes;
            keep = keep | (torch.zeros_like(candidates).scatter(-1, top, torch.ones_like(top, ScalarType.Bool)) & candidates);
        }
        // At most k_r recent (distinct positions) plus k − k_r heavy ones stay; exactly k in a row without empty slots.
        layer.Keep(keep, k);
    }
}
