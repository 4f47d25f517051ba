using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Compression;

/// <summary>
/// The layer-wise Hessian H = 2XXᵀ / N of a linear map's inputs X (in × N), the curvature of ‖WX − ŴX‖² that GPTQ and
/// SparseGPT solve against, accumulated over calibration batches in fp64.
/// </summary>
public sealed class HessianAccumulator : IDisposable
{
    Tensor sum;

    /// <param name="inputs">The linear map's input width.</param>
    public HessianAccumulator(int inputs) => sum = torch.zeros(inputs, inputs, ScalarType.Float64).DetachFromDisposeScope();

    /// <summary>Input vectors seen so far.</summary>
    public long Samples { get; private set; }

    /// <summary>Adds the input rows of <paramref name="x"/> [..., in] (any device and floating type).</summary>
    public void Add(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var rows = x.reshape(-1, x.size(-1)).to(ScalarType.Float64, torch.CPU);
        sum.add_(rows.t().matmul(rows));
        Samples += rows.size(0);
    }

    /// <summary>H = 2XXᵀ / N, fp64 [in, in], on the CPU.</summary>
    public Tensor Hessian()
    {
        if (Samples == 0) throw new InvalidOperationException("no calibration input reached this linear map.");
        return sum * (2.0 / Samples);
    }

    /// <inheritdoc />
    public void Dispose() => sum.Dispose();
}

/// <summary>The parts GPTQ and SparseGPT share: preparing W and H, and each column's quantization grid.</summary>
internal static class HessianSolver
{
    /// <summary>
    /// W and H made ready (fp64 copies): columns whose input is always 0 ("dead", H_jj = 0) are zeroed with H_jj := 1; with
    /// <paramref name="order"/> the columns are permuted (GPTQ's act-order). Then damping H + λI with λ = damp · mean(diag H),
    /// and the upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU): row j of U holds the OBS update of the columns after j once
    /// columns before j are fixed, and U_jj² is [H_F⁻¹]_jj.
    /// </summary>
    public static (Tensor W, Tensor HinvUpper) Prepare(Tensor weight, Tensor hessian, double damping, Tensor? order = null)
    {
        var w = weight.to(ScalarType.Float64, torch.CPU).clone();
        var h = hessian.to(ScalarType.Float64, torch.CPU).clone();
        var dead = h.diagonal().eq(0);
        h.diagonal().masked_fill_(dead, 1.0);
        w.masked_fill_(dead.unsqueeze(0), 0.0);
        if (order is not null)
        {
            w = w.index_select(1, order);
            h = h.index_select(0, order).index_select(1, order);
        }
        double lambda = damping * h.diagonal().mean().item<double>();
        h.diagonal().add_(lambda);
        var inverse = torch.cholesky_inverse(torch.linalg.cholesky(h));
        return (w, torch.linalg.cholesky(inverse).t().contiguous());
    }

    /// <summary>The grid of the column about to be quantized: per row over all columns (<paramref name="groupSize"/> 0, fixed
    /// once from the starting W), or per group of <paramref name="groupSize"/> columns in processing order, from the current
    /// (already updated) W when the group begins — the GPTQ reference's behaviour.</summary>
    public sealed class Grid(int bits, int groupSize) : IDisposable
    {
        (Tensor Step, Tensor Min)? current;

        /// <summary><paramref name="value"/> [rows], the current value of column <paramref name="column"/>, rounded to its grid;
        /// ranges are read from <paramref name="w"/> (the whole matrix, as the reference reads them: columns of the current
        /// lazy block are not yet updated there). Grid tensors live past the caller's scope until <see cref="Dispose"/>.</summary>
        public Tensor Round(Tensor value, Tensor w, int column)
        {
            bool starts = groupSize > 0 ? column % groupSize == 0 : current is null;
            if (starts)
            {
                Dispose();
                using var scope = torch.NewDisposeScope();
                var span = groupSize > 0 ? w.narrow(1, column, Math.Min(groupSize, (int)w.size(1) - column)) : w;
                var (step, min) = GroupQuantizer.Range(span, bits);
                current = (step.squeeze(1).DetachFromDisposeScope(), min.squeeze(1).DetachFromDisposeScope());
            }
            var (s, m) = current!.Value;
            return GroupQuantizer.RoundToGrid(value, s, m, bits);
        }

        public void Dispose()
        {
            current?.Step.Dispose();
            current?.Min.Dispose();
            current = null;
        }
    }
}
