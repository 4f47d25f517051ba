using static TorchSharp.torch;

namespace Tern.Caching;

/// <summary>
/// A cache policy that needs the attention probabilities of each layer (H2O's accumulated attention): attention then takes
/// the path that materialises them and hands them over through <see cref="LayerKvCache.Observe"/>. Policies that do not
/// implement it never pay for them.
/// </summary>
public interface IAttentionObserver
{
    /// <summary>Attention probabilities of one layer's step, shape [batch, heads, queries, keys] (fp32; keys are the layer's
    /// slots in use, or all its slots in a static-shape step; entries of empty or masked slots and rows of padding queries are
    /// zero). A long step hands them over in consecutive blocks of its queries (one call per block, all before
    /// <see cref="IKvCachePolicy.AfterStep"/>), so accumulate what you need.</summary>
    void ObserveAttention(LayerKvCache layer, Tensor probabilities);
}
