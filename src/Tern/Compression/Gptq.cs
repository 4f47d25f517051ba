using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Compression;

/// <summary>How <see cref="Gptq"/> quantizes a weight matrix (defaults: Compress-Then-Prompt's GPTQ recipe).</summary>
public sealed record GptqOptions
{
    /// <summary>Bits per weight: 2, 3 or 4 (8 also works).</summary>
    public int Bits { get; init; } = 4;

    /// <summary>Input columns sharing one grid (step, min) per row; 0: one grid per row over all columns (the recipe's per-row).</summary>
    public int GroupSize { get; init; }

    /// <summary>Quantize columns in order of decreasing H_jj (act-order): the columns with the largest inputs first, while the
    /// most columns are left to absorb their error.</summary>
    public bool ActOrder { get; init; } = true;

    /// <summary>λ = damping · mean(diag H) added to the diagonal of H before inverting it.</summary>
    public double Damping { get; init; } = 0.01;

    /// <summary>Columns per lazy batch: errors reach the columns after a batch in one matrix product.</summary>
    public int BlockSize { get; init; } = 128;

    internal void Validate()
    {
        if (Bits is not (2 or 3 or 4 or 8)) throw new OptionException($"{TernOption.CompressBits} must be 2, 3, 4 or 8 (got {Bits}).");
        if (GroupSize < 0) throw new OptionException($"{TernOption.CompressGroupSize} must be 0 (per row) or positive (got {GroupSize}).");
        if (Damping < 0) throw new OptionException($"{TernOption.CompressDamping} must be ≥ 0 (got {Damping}).");
        if (BlockSize < 1) throw new ArgumentException($"the block size must be positive (got {BlockSize}).");
    }
}

/// <summary>A compressed weight matrix and the layer-wise loss its solver reports.</summary>
/// <param name="Weight">The compressed weight, dense, in the input's shape and dtype (on the CPU).</param>
/// <param name="Loss">Σ_j ‖w_j − ŵ_j‖² / (2 [H_F⁻¹]_jj): the OBS estimate of ‖(W − Ŵ)X‖² / N added by the rounding
/// decisions (the reference's "error").</param>
public sealed record CompressedWeight(Tensor Weight, double Loss);

/// <summary>
/// GPTQ (Frantar et al. 2023): quantize W [out, in] column by column on the grid of <see cref="GroupQuantizer"/>, each
/// column's rounding error spread over the columns not yet quantized so as to minimise ‖WX − ŴX‖² — the Optimal Brain
/// Quantizer update δ_F = −(w_j − q_j) / [H_F⁻¹]_jj · (H_F⁻¹)_{j,:}, with H = 2XXᵀ + λI. The successive inverses H_F⁻¹ are
/// the rows of the Cholesky factor of H⁻¹ (one factorisation, no per-column inverse updates), and updates are applied in
/// lazy batches of <see cref="GptqOptions.BlockSize"/> columns. fp64 throughout.
/// </summary>
public static class Gptq
{
    /// <summary>Quantizes <paramref name="weight"/> [out, in] against <paramref name="hessian"/> [in, in] (from
    /// <see cref="HessianAccumulator"/>).</summary>
    public static CompressedWeight Quantize(Tensor weight, Tensor hessian, GptqOptions options)
    {
        options.Validate();
        using var scope = torch.NewDisposeScope();
        int columns = (int)weight.size(1);
        // act-order: decreasing H_jj.
        var order = options.ActOrder ? hessian.diagonal().argsort(descending: true).cpu() : null;
        var (w, u) = HessianSolver.Prepare(weight, hessian, options.Damping, order);
        var q = torch.zeros_like(w);
        using var grid = new HessianSolver.Grid(options.Bits, options.GroupSize);
        double loss = 0;
        for (int i1 = 0; i1 < columns; i1 += options.BlockSize)
        {
            using var blockScope = torch.NewDisposeScope();
            int count = Math.Min(options.BlockSize, columns - i1);
            var w1 = w.narrow(1, i1, count).clone();
            var err1 = torch.zeros_like(w1);
            var u1 = u.narrow(0, i1, count).narrow(1, i1, count);
            for (int i = 0; i < count; i++)
            {
                using var columnScope = torch.NewDisposeScope();
                var column = w1.select(1, i);
                var rounded = grid.Round(column, w, i1 + i);
                q.select(1, i1 + i).copy_(rounded);
                var d = u1[i, i];
                var err = (column - rounded) / d;
                loss += (err.square().sum() / 2).item<double>();
                // w_{j≥i} −= err · U_{i, j≥i}: this column's error reaches the rest of the block now.
                w1.narrow(1, i, count - i).sub_(err.unsqueeze(1).matmul(u1.narrow(0, i, 1).narrow(1, i, count - i)));
                err1.select(1, i).copy_(err);
            }
            // ...and the columns after the block in one product (lazy batch update).
            if (i1 + count < columns)
                w.narrow(1, i1 + count, columns - i1 - count).sub_(err1.matmul(u.narrow(0, i1, count).narrow(1, i1 + count, columns - i1 - count)));
        }
        if (order is not null) q = q.index_select(1, order.argsort());
        return new CompressedWeight(q.to(weight.dtype).MoveToOuterDisposeScope(), loss);
    }
}
