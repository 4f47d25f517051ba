using Tern.Caching;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Sparsity;

/// <summary>
/// The full cache, observing attention to recover each head's output o_h = softmax(q·kᵀ/√d)·v (before the output projection)
/// from the probabilities the explicit attention path hands to an <see cref="IAttentionObserver"/>: the model's own forward,
/// with nothing in <c>Tern.Models</c> changed.
/// </summary>
internal sealed class HeadOutputProbe(int layers) : IKvCachePolicy, IAttentionObserver
{
    readonly List<Tensor>[] blocks = Enumerable.Range(0, layers).Select(_ => new List<Tensor>()).ToArray();

    public string Name => "head-output-probe";
    public bool AppendOnly => false; // asks for the explicit path, which materialises probabilities
    public int Capacity(int maxSequenceLength, int maxStepTokens) => maxSequenceLength;
    public void BeforeAppend(LayerKvCache layer, int incomingTokens) { }
    public void AfterStep(LayerKvCache layer) { }

    public void ObserveAttention(LayerKvCache layer, Tensor probabilities)
    {
        var values = layer.ActiveValues.to(ScalarType.Float32); // [B,Hkv,L,D]
        long groups = probabilities.shape[1] / values.shape[1];
        if (groups > 1) values = values.repeat_interleave(groups, 1);
        // Probabilities arrive in blocks of queries, inside attention's own dispose scope: keep the outputs past it.
        blocks[layer.Layer].Add(probabilities.matmul(values).DetachFromDisposeScope()); // [B,H,n,D]
    }

    /// <summary>Layer <paramref name="layer"/>'s head outputs of the step, [B,H,T,D] fp32, owned by the caller's scope.</summary>
    public Tensor Take(int layer)
    {
        var parts = blocks[layer];
        if (parts.Count == 0) throw new InvalidOperationException($"layer {layer} handed over no attention probabilities.");
        var all = parts.Count == 1 ? parts[0].alias() : torch.cat(parts, 2);
        foreach (var p in parts) p.Dispose();
        parts.Clear();
        return all;
    }
}
