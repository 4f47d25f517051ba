using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Training.InRank;

/// <summary>A rank check's outcome for one factored linear map.</summary>
/// <param name="Rank">The rank after the check (never below the rank before it).</param>
/// <param name="Explained">The explained-variance score g(k) of the last k tried (NaN when no k was tried: the rank is at its cap).</param>
public sealed record RankDecision(int Rank, double Explained);

/// <summary>
/// InRank's numerics, as released (<c>in_rank_efficient.py</c>): the explained-variance rank rule, the spectrum of B·A without
/// forming it, and the SVD truncation of the stage hand-off. Computed in fp64: rank decisions must not depend on rounding.
/// </summary>
public static class RankRule
{
    /// <summary>g(k) = 1 − Var(s − s_k) / Var(s), where s_k is <paramref name="s"/> with the entries from k on zeroed and Var is
    /// the unbiased variance over the whole vector — trailing zero singular values included, as released.</summary>
    public static double ExplainedVariance(ReadOnlySpan<double> s, int k)
    {
        var tail = new double[s.Length]; // s − s_k: the entries from k on
        for (int i = k; i < s.Length; i++) tail[i] = s[i];
        return 1 - Variance(tail) / Variance(s);
    }

    static double Variance(ReadOnlySpan<double> x)
    {
        double mean = 0;
        foreach (double v in x) mean += v;
        mean /= x.Length;
        double sum = 0;
        foreach (double v in x) sum += (v - mean) * (v - mean);
        return sum / (x.Length - 1);
    }

    /// <summary>
    /// The released <c>update_rank</c>: when r &lt; Rmax − b, try k = r, r+1, …, min(r + b, Rmax − b) − 1 and stop at the first
    /// with g(k) &gt; α; the new rank is that k (the last one tried when none passes). The rank never decreases and grows by
    /// at most b − 1 per check.
    /// </summary>
    /// <param name="s">All min(m, n) singular values of the live product, descending (trailing zeros included).</param>
    /// <param name="rank">The current rank r.</param>
    /// <param name="buffer">The buffer b.</param>
    /// <param name="maxRank">Rmax, the allocated components.</param>
    /// <param name="threshold">α.</param>
    public static RankDecision NextRank(ReadOnlySpan<double> s, int rank, int buffer, int maxRank, double threshold)
    {
        if (rank >= maxRank - buffer) return new RankDecision(rank, double.NaN);
        int k = rank, end = Math.Min(rank + buffer, maxRank - buffer);
        double g = double.NaN;
        for (; k < end; k++)
        {
            g = ExplainedVariance(s, k);
            if (g > threshold) break;
        }
        return new RankDecision(Math.Min(k, end - 1), g);
    }

    /// <summary>
    /// All min(m, n) singular values of P = B·A (B [m, L], A [L, n]), descending, without forming P: B = Q_B R_B and
    /// Aᵀ = Q_A R_A (reduced QR), so P = Q_B (R_B R_Aᵀ) Q_Aᵀ has the singular values of the small core R_B R_Aᵀ; the other
    /// min(m, n) − L are zero.
    /// </summary>
    public static double[] Spectrum(Tensor b, Tensor a)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var (_, rb) = torch.linalg.qr(b.to(ScalarType.Float64));
        var (_, ra) = torch.linalg.qr(a.t().to(ScalarType.Float64));
        var core = torch.linalg.svdvals(rb.matmul(ra.t())).cpu().data<double>().ToArray();
        var s = new double[Math.Min(b.size(0), a.size(1))];
        core.AsSpan(0, Math.Min(core.Length, s.Length)).CopyTo(s);
        return s;
    }

    /// <summary>
    /// The stage hand-off: the best rank-<paramref name="rank"/> factors of P = B·A (truncated SVD P ≈ Ũ_r Σ_r Ṽ_rᵀ, computed
    /// through the QR core as in <see cref="Spectrum"/>), with √σ split into both: B' = Ũ_r diag(√σ_r) [m, r],
    /// A' = diag(√σ_r) Ṽ_rᵀ [r, n]. In <paramref name="a"/>'s type and device, in the caller's dispose scope.
    /// </summary>
    public static (Tensor A, Tensor B) Truncate(Tensor b, Tensor a, int rank)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var (qb, rb) = torch.linalg.qr(b.to(ScalarType.Float64));
        var (qa, ra) = torch.linalg.qr(a.t().to(ScalarType.Float64));
        var (u, sigma, vh) = torch.linalg.svd(rb.matmul(ra.t()), fullMatrices: false);
        if (rank > sigma.size(0)) throw new ArgumentOutOfRangeException(nameof(rank), rank, $"the product has only {sigma.size(0)} components.");
        var root = sigma.narrow(0, 0, rank).sqrt();
        var newB = qb.matmul(u.narrow(1, 0, rank)) * root;                      // Ũ_r diag(√σ_r)
        var newA = root.unsqueeze(1) * vh.narrow(0, 0, rank).matmul(qa.t());    // diag(√σ_r) Ṽ_rᵀ
        return (newA.to(a.dtype).contiguous().MoveToOuterDisposeScope(), newB.to(b.dtype).contiguous().MoveToOuterDisposeScope());
    }
}
