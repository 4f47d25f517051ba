using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Compression;

/// <summary>How <see cref="SparseGpt"/> prunes a weight matrix (defaults: Compress-Then-Prompt's SparseGPT recipe at 50%).</summary>
public sealed record SparseGptOptions
{
    /// <summary>Fraction of the weights set to zero, in [0, 1): exactly round(fraction · rows · columns) of every block.</summary>
    public double Sparsity { get; init; } = 0.5;

    /// <summary>Bits of the joint quantization of the weights kept (2, 3, 4 or 8); 0: prune only.</summary>
    public int Bits { get; init; }

    /// <summary>Input columns sharing one quantization grid; 0: one grid per row.</summary>
    public int GroupSize { get; init; }

    /// <summary>λ = damping · mean(diag H) added to the diagonal of H.</summary>
    public double Damping { get; init; } = 0.01;

    /// <summary>Columns per block: the mask is chosen per block, and errors reach later blocks in one product.</summary>
    public int BlockSize { get; init; } = 128;

    internal void Validate()
    {
        if (Sparsity is < 0 or >= 1 || double.IsNaN(Sparsity))
            throw new OptionException($"{TernOption.CompressSparsity} must be in [0, 1) (got {Sparsity}).");
        if (Bits is not (0 or 2 or 3 or 4 or 8)) throw new OptionException($"{TernOption.CompressBits} must be 2, 3, 4 or 8 for joint quantization, or none (got {Bits}).");
        if (GroupSize < 0) throw new OptionException($"{TernOption.CompressGroupSize} must be 0 (per row) or positive (got {GroupSize}).");
        if (Damping < 0) throw new OptionException($"{TernOption.CompressDamping} must be ≥ 0 (got {Damping}).");
        if (BlockSize < 1) throw new ArgumentException($"the block size must be positive (got {BlockSize}).");
    }
}

/// <summary>
/// SparseGPT (Frantar &amp; Alistarh 2023): unstructured pruning by the same column-by-column OBS solver as GPTQ. Per block of
/// columns the mask holds the weights of least saliency w² / [H⁻¹]_jj² (OBS mask selection, with the block's Cholesky rows
/// standing in for the diagonal of the shrinking inverse); then each column's pruned (and, jointly, quantized) error
/// err = (w_j − ŵ_j) / [H_F⁻¹]_jj updates the columns after it, w −= err · (H_F⁻¹)_{j,:}, as in <see cref="Gptq"/>.
/// Exactly round(s · rows · count) weights of each block are zero: the reference's `≤ threshold` takes ties too and overshoots.
/// </summary>
public static class SparseGpt
{
    /// <summary>Prunes <paramref name="weight"/> [out, in] against <paramref name="hessian"/> [in, in].</summary>
    public static CompressedWeight Prune(Tensor weight, Tensor hessian, SparseGptOptions options)
    {
        options.Validate();
        using var scope = torch.NewDisposeScope();
        int rows = (int)weight.size(0), columns = (int)weight.size(1);
        var (w, u) = HessianSolver.Prepare(weight, hessian, options.Damping);
        using var grid = options.Bits > 0 ? new HessianSolver.Grid(options.Bits, options.GroupSize) : null;
        double loss = 0;
        for (int i1 = 0; i1 < columns; i1 += options.BlockSize)
        {
            using var blockScope = torch.NewDisposeScope();
            int count = Math.Min(options.BlockSize, columns - i1);
            var w1 = w.narrow(1, i1, count).clone();
            var q1 = torch.zeros_like(w1);
            var err1 = torch.zeros_like(w1);
            var u1 = u.narrow(0, i1, count).narrow(1, i1, count);
            var saliency = w1.square() / u1.diagonal().square().unsqueeze(0);
            long pruned = (long)Math.Round(options.Sparsity * rows * count);
            var mask = torch.zeros(rows * count, ScalarType.Bool);
            if (pruned > 0) mask.index_fill_(0, saliency.flatten().argsort().narrow(0, 0, pruned), true);
            mask = mask.view(rows, count);
            for (int i = 0; i < count; i++)
            {
                using var columnScope = torch.NewDisposeScope();
                var column = w1.select(1, i);
                var kept = column.masked_fill(mask.select(1, i), 0.0);
                // Joint quantization rounds what is kept; pruned weights stay exactly 0 (they are not on the grid).
                var value = grid is null ? kept : grid.Round(kept, w, i1 + i).masked_fill(mask.select(1, i), 0.0);
                q1.select(1, i).copy_(value);
                var err = (column - value) / u1[i, i];
                loss += (err.square().sum() / 2).item<double>();
                w1.narrow(1, i, count - i).sub_(err.unsqueeze(1).matmul(u1.narrow(0, i, 1).narrow(1, i, count - i)));
                err1.select(1, i).copy_(err);
            }
            w.narrow(1, i1, count).copy_(q1);
            if (i1 + count < columns)
                w.narrow(1, i1 + count, columns - i1 - count).sub_(err1.matmul(u.narrow(0, i1, count).narrow(1, i1 + count, columns - i1 - count)));
        }
        return new CompressedWeight(w.to(weight.dtype).MoveToOuterDisposeScope(), loss);
    }
}
