using static TorchSharp.torch;

namespace Tern.Sparsity;

/// <summary>
/// DejaVu's sparsity predictor: logits = (x·A)·B, A ∈ ℝ^{h×r}, B ∈ ℝ^{r×out}, no bias and no nonlinearity between the two
/// maps (the released code). x is a layer input (the residual stream before the norm); out is the MLP's neurons or the heads.
/// </summary>
public sealed class LowRankPredictor : IDisposable
{
    /// <summary>Takes ownership of <paramref name="a"/> [hidden, rank] and <paramref name="b"/> [rank, outputs].</summary>
    public LowRankPredictor(Tensor a, Tensor b)
    {
        if (a.dim() != 2 || b.dim() != 2 || a.size(1) != b.size(0))
            throw new ArgumentException($"A [{string.Join(", ", a.shape)}] and B [{string.Join(", ", b.shape)}] do not chain as [hidden, rank]·[rank, outputs].");
        A = a;
        B = b;
    }

    /// <summary>[hidden, rank].</summary>
    public Tensor A { get; }
    /// <summary>[rank, outputs].</summary>
    public Tensor B { get; }
    /// <summary>The rank r.</summary>
    public int Rank => (int)A.size(1);
    /// <summary>Units predicted (neurons or heads).</summary>
    public int Outputs => (int)B.size(1);

    /// <summary>Logits [.., outputs] for inputs [.., hidden]; a unit is predicted active where its logit is ≥ 0 (sigmoid ≥ 0.5), or
    /// by top-K at inference.</summary>
    public Tensor Logits(Tensor x) => x.to(A.dtype, A.device).matmul(A).matmul(B);

    /// <summary>A copy on <paramref name="device"/>, in <paramref name="dtype"/> (default: as it is); this one stays as it is.</summary>
    public LowRankPredictor To(Device device, ScalarType? dtype = null) => new(
        A.to(dtype ?? A.dtype, device, copy: true).DetachFromDisposeScope(), B.to(dtype ?? B.dtype, device, copy: true).DetachFromDisposeScope());

    /// <inheritdoc />
    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
    }
}
