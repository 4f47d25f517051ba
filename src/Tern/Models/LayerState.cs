using Tern.Caching;

namespace Tern.Models;

/// <summary>
/// What a decoder layer's attention runs over in one step: one cache's layer or, for a batch whose consecutive row ranges
/// belong to caches of different configurations (serving pools of different KV policies stepped in one forward pass), each
/// cache's layer over its own rows. Everything else in the layer runs once over all rows. A recurrent layer (Hyena) finds its
/// per-sequence state in <see cref="Recurrent"/>, which the same cache holds.
/// </summary>
internal readonly struct LayerState
{
    LayerState(LayerKvCache? cache, IReadOnlyList<StepSegment>? segments, int layer, RecurrentState? recurrent = null) =>
        (Cache, Segments, Layer, Recurrent) = (cache, segments, layer, recurrent);

    /// <summary>The layer of the one cache every row steps through; null for a segmented step, or when the cache has no KV
    /// layers (a purely recurrent model).</summary>
    public LayerKvCache? Cache { get; }

    /// <summary>The recurrent layers' state of the one cache every row steps through (<see cref="KvCache.Recurrent"/>); null
    /// for a segmented step and for models without recurrent layers.</summary>
    public RecurrentState? Recurrent { get; }

    /// <summary>The row ranges and their caches of a segmented step; null for one cache.</summary>
    public IReadOnlyList<StepSegment>? Segments { get; }

    /// <summary>The layer's index (into each segment's cache).</summary>
    public int Layer { get; }

    /// <summary>True when new keys must reach attention unrotated: some cache stores them so and rotates them at their cache
    /// index (StreamingLLM); attention rotates the keys of the other segments itself.</summary>
    public bool KeysAtCacheIndex
    {
        get
        {
            if (Cache is not null) return Cache.KeysAtCacheIndex;
            foreach (var s in Segments!) if (s.Cache[Layer].KeysAtCacheIndex) return true;
            return false;
        }
    }

    public static implicit operator LayerState(LayerKvCache cache) => new(cache, null, cache.Layer);

    /// <summary>Layer <paramref name="layer"/> of <paramref name="cache"/>: its KV layer (when the cache has KV layers) and the
    /// recurrent state.</summary>
    public static LayerState Of(KvCache cache, int layer) =>
        new(cache.LayerCount > 0 ? cache[layer] : null, null, layer, cache.Recurrent);

    /// <summary>Layer <paramref name="layer"/> of a segmented step.</summary>
    public static LayerState Of(IReadOnlyList<StepSegment> segments, int layer) => new(null, segments, layer);
}

/// <summary>Rows [<paramref name="Start"/>, Start + <paramref name="Rows"/>) of a step, stepping through <paramref name="Cache"/>,
/// and the step as that cache sees them (their positions by cache index when it rolls positions).</summary>
internal sealed record StepSegment(int Start, int Rows, KvCache Cache, ModelStep Step);
