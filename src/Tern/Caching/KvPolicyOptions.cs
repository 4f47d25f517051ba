using System.Globalization;
using Tern.Runtime;

namespace Tern.Caching;

/// <summary>A KV budget: an absolute number of entries per sequence, layer and head, or a ratio of the sequence length the
/// cache is created for (<see cref="LayerKvCache.MaxSequenceLength"/>: prompt plus new tokens in generation).</summary>
public readonly record struct KvBudget
{
    KvBudget(int tokens, double ratio) => (Tokens, Ratio) = (tokens, ratio);

    /// <summary>Entries, when the budget is absolute (0 for a ratio).</summary>
    public int Tokens { get; }

    /// <summary>Fraction of the sequence, in (0, 1], when the budget is relative (0 for a token count).</summary>
    public double Ratio { get; }

    /// <summary>True for a ratio budget.</summary>
    public bool IsRatio => Ratio > 0;

    /// <summary>An absolute budget; <paramref name="option"/> names the option in messages (default <see cref="TernOption.KvBudget"/>).</summary>
    public static KvBudget OfTokens(int tokens, TernOption? option = null) =>
        tokens >= 1 ? new KvBudget(tokens, 0) : throw new OptionException($"{option ?? TernOption.KvBudget} must be at least 1 token (got {tokens}).");

    /// <summary>A budget relative to the sequence length.</summary>
    public static KvBudget OfRatio(double ratio, TernOption? option = null) =>
        ratio > 0 && ratio <= 1 ? new KvBudget(0, ratio)
            : throw new OptionException($"{option ?? TernOption.KvBudget} as a ratio must be in (0, 1] (got {ratio.ToString(CultureInfo.InvariantCulture)}).");

    /// <summary>Reads "512" (tokens) or "0.2" (a ratio: any number with a decimal point or exponent).</summary>
    public static KvBudget Parse(string text, TernOption? option = null)
    {
        text = text.Trim();
        if (int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int tokens)) return OfTokens(tokens, option);
        if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double ratio) && double.IsFinite(ratio))
            return OfRatio(ratio, option);
        throw new OptionException($"{option ?? TernOption.KvBudget} must be a token count such as 512 or a ratio such as 0.2 (got '{text}').");
    }

    /// <summary>The budget in entries for a sequence of <paramref name="sequenceLength"/> tokens: the token count, or
    /// ⌊ratio·length⌋ as H2O's scripts compute int(ratio·T).</summary>
    public int Resolve(int sequenceLength) => IsRatio ? (int)Math.Floor(Ratio * sequenceLength) : Tokens;

    /// <inheritdoc />
    public override string ToString() => IsRatio ? Ratio.ToString(CultureInfo.InvariantCulture) : Tokens.ToString(CultureInfo.InvariantCulture);
}

/// <summary>
/// A KV-cache policy by name, as the command line gives it (<c>--kv-policy</c>, <c>--kv-budget</c>, <c>--kv-sink</c>,
/// <c>--kv-recent</c>, <c>--kv-bits</c>); <see cref="KvCachePolicies.Create"/> builds it. Errors are <see cref="OptionException"/>s.
/// </summary>
public sealed record KvPolicyOptions
{
    /// <summary>Default number of attention sinks (StreamingLLM's paper default, 4 initial tokens).</summary>
    public const int DefaultSinks = 4;

    /// <summary>full, window, window-recompute, sink or h2o (<see cref="KvCachePolicies.Names"/>).</summary>
    public string Policy { get; init; } = "full";

    /// <summary>The cache budget per sequence, layer and head: sink = sinks + recent window; h2o = heavy + recent; window and
    /// window-recompute = the window. Required by every policy but full.</summary>
    public KvBudget? Budget { get; init; }

    /// <summary>Attention sinks kept by the sink policy (the first tokens ever seen, BOS included); null = 4.</summary>
    public int? Sinks { get; init; }

    /// <summary>H2O's recent window (always kept); the rest of the budget holds heavy hitters. Null = half the budget, as the
    /// H2O paper's 10% heavy + 10% recent split.</summary>
    public KvBudget? Recent { get; init; }

    /// <summary>Bits per stored key/value element: 16 (the model's dtype), 8 or 4 (FlexGen group-wise quantization).</summary>
    public int Bits { get; init; } = 16;

    /// <summary>H2O only: rank tokens by their mean attention per query that saw them instead of the sum, offsetting the
    /// early-token bias of accumulated scores. Off by default, as in the reference.</summary>
    public bool NormalizeScores { get; init; }

    /// <summary>sink, window and h2o: evict once the cache has overrun its budget by this many tokens, all at once, instead
    /// of one token after every step (1, the papers' rule). Amortises the compaction at the cost of up to this many − 1
    /// extra entries.</summary>
    public int EvictEvery { get; init; } = 1;

    /// <summary>Options from the settings as given on a command line or in a request (null = not given: the default); the
    /// budgets are parsed (count or ratio) with messages naming the option. Call <see cref="Validate"/> for the rest.</summary>
    public static KvPolicyOptions Parse(string? policy, string? budget, int? sinks, string? recent, int? bits, int? evictEvery) => new()
    {
        Policy = policy ?? "full",
        Budget = budget is null ? null : KvBudget.Parse(budget),
        Sinks = sinks,
        Recent = recent is null ? null : KvBudget.Parse(recent, TernOption.KvRecent),
        Bits = bits ?? 16,
        EvictEvery = evictEvery ?? 1,
    };

    /// <summary>Checks what can be checked without a sequence length; messages name the option.</summary>
    public void Validate()
    {
        if (!KvCachePolicies.Names.Contains(Policy))
            throw new OptionException($"{TernOption.KvPolicy} must be one of {string.Join(", ", KvCachePolicies.Names)} (got '{Policy}').");
        ValidateBits(Bits);
        if (Policy == "full" && Budget is not null)
            throw new OptionException($"{TernOption.KvBudget} does not apply to {TernOption.KvPolicy} full, which keeps every entry.");
        if (Policy != "full" && Budget is null)
            throw new OptionException($"{TernOption.KvPolicy} {Policy} needs {TernOption.KvBudget} (a token count such as 512 or a ratio such as 0.2).");
        if (Sinks is not null && Policy != "sink")
            throw new OptionException($"{TernOption.KvSink} applies to {TernOption.KvPolicy} sink only (got {TernOption.KvPolicy} {Policy}).");
        if (Sinks is < 0) throw new OptionException($"{TernOption.KvSink} must be >= 0 (got {Sinks}).");
        if (Recent is not null && Policy != "h2o")
            throw new OptionException($"{TernOption.KvRecent} applies to {TernOption.KvPolicy} h2o only (got {TernOption.KvPolicy} {Policy}).");
        ValidateEvictEvery(EvictEvery);
        if (EvictEvery != 1 && Policy is not ("sink" or "window" or "h2o"))
            throw new OptionException($"{TernOption.KvEvictEvery} applies to {TernOption.KvPolicy} sink, window and h2o (got {TernOption.KvPolicy} {Policy}).");
        if (NormalizeScores && Policy != "h2o")
            throw new OptionException($"score normalisation applies to {TernOption.KvPolicy} h2o only (got {TernOption.KvPolicy} {Policy}).");
        if (Budget is { } budget)
        {
            if (Policy == "sink" && !budget.IsRatio && SinkCount >= budget.Tokens)
                throw new OptionException($"{TernOption.KvSink} {SinkCount} must be smaller than {TernOption.KvBudget} {budget}: the budget holds the sinks and a recent window of at least one token.");
            if (Recent is { } recent && recent.IsRatio == budget.IsRatio && (recent.IsRatio ? recent.Ratio > budget.Ratio : recent.Tokens > budget.Tokens))
                throw new OptionException($"{TernOption.KvRecent} {recent} must not exceed {TernOption.KvBudget} {budget}.");
        }
    }

    /// <summary>The window StreamingLLM's re-computation baseline re-runs at every step (window-recompute's budget; null for
    /// the other policies, which append).</summary>
    public KvBudget? RecomputeWindow => Policy == "window-recompute" ? Budget : null;

    /// <summary>Sinks of the sink policy with the default applied.</summary>
    internal int SinkCount => Sinks ?? DefaultSinks;

    /// <summary>Rejects an eviction interval below 1.</summary>
    internal static void ValidateEvictEvery(int evictEvery)
    {
        if (evictEvery < 1) throw new OptionException($"{TernOption.KvEvictEvery} must be at least 1 (got {evictEvery}).");
    }

    /// <summary>Rejects bit widths other than 16, 8 and 4.</summary>
    internal static void ValidateBits(int bits)
    {
        if (bits is not (16 or 8 or 4)) throw new OptionException($"{TernOption.KvBits} must be 16, 8 or 4 (got {bits}).");
    }
}
