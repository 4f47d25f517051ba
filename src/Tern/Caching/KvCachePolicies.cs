using Tern.Runtime;

namespace Tern.Caching;

/// <summary>Builds any KV-cache policy by name: the one place the names are known (the CLI and evaluation commands call it).</summary>
public static class KvCachePolicies
{
    /// <summary>The policy names, as <c>--kv-policy</c> accepts them.</summary>
    public static IReadOnlyList<string> Names { get; } = new[] { "full", "window", "window-recompute", "sink", "h2o" };

    /// <summary>Validates <paramref name="options"/> and builds the cache they name: sink and window roll positions
    /// (StreamingLLM); window-recompute runs over the full cache (its window is <see cref="KvPolicyOptions.RecomputeWindow"/>,
    /// a way of stepping rather than of caching).</summary>
    public static KvCacheConfig Create(KvPolicyOptions options)
    {
        options.Validate();
        var budget = options.Budget.GetValueOrDefault();
        return options.Policy switch
        {
            "full" or "window-recompute" => new KvCacheConfig(bits: options.Bits),
            "window" or "sink" => new KvCacheConfig(new StreamingPolicy(budget, options.Policy == "sink" ? options.SinkCount : 0, options.EvictEvery),
                options.Bits, rollPositions: true),
            "h2o" => new KvCacheConfig(new HeavyHitterPolicy(budget, options.Recent, options.NormalizeScores, options.EvictEvery), options.Bits),
            _ => throw new OptionException($"{TernOption.KvPolicy} '{options.Policy}' is unknown."), // Validate lets no other name through
        };
    }

    /// <summary>Refuses an append that would overflow a layer; the policies that evict call it as a guard (their
    /// <see cref="IKvCachePolicy.Capacity"/> leaves room for a step, so it fires only on a misuse).</summary>
    internal static void EnsureRoom(LayerKvCache layer, int incomingTokens, string why)
    {
        if (layer.Length + incomingTokens > layer.Capacity && !layer.FillsFreeSlots(incomingTokens)) // free slots wait below the length
            throw new InvalidOperationException(
                $"KV cache of layer {layer.Layer} is full: {layer.Length} + {incomingTokens} entries exceed its {layer.Capacity} slots ({why}).");
    }

    /// <summary>A budget resolved for a layer's sequence length, refused when it leaves less than <paramref name="minimum"/>
    /// entries to <paramref name="policy"/> (the policy's name as the message gives it).</summary>
    internal static int Resolve(KvBudget budget, int sequenceLength, int minimum, string policy)
    {
        int tokens = budget.Resolve(sequenceLength);
        if (tokens < minimum)
            throw new OptionException(
                $"{TernOption.KvBudget} {budget} gives {tokens} entries for a {sequenceLength}-token sequence; {TernOption.KvPolicy} {policy} needs at least {minimum}.");
        return tokens;
    }
}
