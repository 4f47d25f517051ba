using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Distillation;

/// <summary>
/// The singular values σ_0 ≥ σ_1 ≥ … of a filter's Hankel matrix H_ij = h_{i+j} (i, j &lt; K, K = ⌊(L+1)/2⌋; the SH convention of
/// brief §1.4: taps from t = 0). rank(H) is the minimal exact state order (Kronecker) and σ_d bounds the best order-d fit in Hankel
/// norm (AAK), so the spectrum's drop suggests the distillation order.
/// </summary>
/// <param name="Values">The singular values, descending, in fp64.</param>
public sealed record HankelSpectrum(double[] Values)
{
    /// <summary>The spectra of the filters <paramref name="filters"/> [C, L] (one per row), computed batched in fp64.</summary>
    /// <param name="filters">Real filter taps, one filter per row.</param>
    /// <param name="size">K, the Hankel matrix's side; by default the largest square that the L taps fill, ⌊(L+1)/2⌋.</param>
    public static HankelSpectrum[] Compute(Tensor filters, int? size = null)
    {
        if (filters.dim() != 2) throw new ArgumentException($"filters must be [C, L], got [{string.Join(", ", filters.shape)}].", nameof(filters));
        int length = (int)filters.size(1);
        int k = size ?? (length + 1) / 2;
        if (k < 1 || 2 * k - 1 > length)
            throw new ArgumentOutOfRangeException(nameof(size), k, $"a {k}×{k} Hankel matrix needs {2 * k - 1} taps; the filters have {length}.");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var hankel = Hankel(filters.to(ScalarType.Float64, CPU), k, 0);
        var sigma = linalg.svdvals(hankel).contiguous().data<double>().ToArray();
        return Enumerable.Range(0, (int)filters.size(0)).Select(c => new HankelSpectrum(sigma.AsSpan(c * k, k).ToArray())).ToArray();
    }

    /// <summary>The spectrum of one filter.</summary>
    public static HankelSpectrum Compute(double[] filter, int? size = null)
    {
        using var scope = torch.NewDisposeScope();
        return Compute(torch.tensor(filter, ScalarType.Float64).unsqueeze(0), size)[0];
    }

    /// <summary>The suggested order d: the smallest d with σ_d / σ_0 &lt; <paramref name="tolerance"/> (σ 0-indexed: the first d
    /// singular values carry the filter); the full size when none falls below it, 0 for an all-zero filter.</summary>
    public int Order(double tolerance)
    {
        if (Values.Length == 0 || Values[0] == 0) return 0;
        for (int d = 1; d < Values.Length; d++)
            if (Values[d] / Values[0] < tolerance) return d;
        return Values.Length;
    }

    /// <summary>[C, K, K] Hankel matrices of rows of <paramref name="filters"/> [C, L], starting at tap
    /// <paramref name="shift"/>: H_ij = h_{i+j+shift}. Views sliding windows (no copy).</summary>
    internal static Tensor Hankel(Tensor filters, int size, int shift) =>
        filters.narrow(1, shift, 2 * size - 1).unfold(1, size, 1);
}
