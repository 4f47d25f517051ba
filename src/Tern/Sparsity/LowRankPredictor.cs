using Tern.Interop;
using TorchSharp;
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
        (aT, bT) = (a.t().DetachFromDisposeScope(), b.t().DetachFromDisposeScope()); // owned here, as A and B
    }

    // Aᵀ and Bᵀ as views: x·A = x·(Aᵀ)ᵀ, the one-row GEMV's form y = x·Wᵀ, which reads W's rows (contiguous in a copy made by To
    // for CUDA).
    readonly Tensor aT, bT;

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
    public Tensor Logits(Tensor x) => Product(Product(x.to(A.dtype, A.device), A, aT), B, bT);

    // One row on CUDA through the fused GEMV where the factor is stored transposed (To) and the inner size is a multiple of 8:
    // cuBLAS reads a one-row product well below the memory bandwidth, and the predictors run beside every decode step.
    static Tensor Product(Tensor x, Tensor factor, Tensor transposed) =>
        FusedKernels.TryGemv(x, transposed, null, null, out var y) ? y : x.matmul(factor);

    /// <summary>A copy on <paramref name="device"/>, in <paramref name="dtype"/> (default: as it is); this one stays as it is. On CUDA
    /// each factor is stored transposed (A and B are views of Aᵀ and Bᵀ), the layout the one-row GEMV reads.</summary>
    public LowRankPredictor To(Device device, ScalarType? dtype = null)
    {
        Tensor Copy(Tensor factor)
        {
            using var scope = torch.NewDisposeScope();
            var copy = factor.to(dtype ?? factor.dtype, device, copy: true);
            if (device.type == DeviceType.CUDA) copy = copy.t().contiguous().t();
            return copy.MoveToOuterDisposeScope();
        }
        return new(Copy(A).DetachFromDisposeScope(), Copy(B).DetachFromDisposeScope());
    }

    /// <inheritdoc />
    public void Dispose()
    {
        aT.Dispose();
        bT.Dispose();
        A.Dispose();
        B.Dispose();
    }
}
