using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Compression;

/// <summary>How <see cref="GroupQuantizer"/> compresses a tensor.</summary>
public sealed record GroupQuantizationOptions
{
    /// <summary>Bits per code: 2, 3 or 4 (two codes per byte) or 8.</summary>
    public int Bits { get; init; } = 4;

    /// <summary>Consecutive elements sharing one (step, min) pair. FlexGen uses 64.</summary>
    public int GroupSize { get; init; } = 64;

    /// <summary>The dimension the groups run along: FlexGen groups weights along dim 0 of (out, in) and the KV cache along the
    /// head dimension (the last).</summary>
    public int Dimension { get; init; } = -1;

    internal void Validate()
    {
        if (Bits is not (2 or 3 or 4 or 8)) throw new ArgumentException($"quantization bits must be 2, 3, 4 or 8 (got {Bits}).");
        if (GroupSize < 2 || GroupSize % 2 != 0) throw new ArgumentException($"the group size must be an even number ≥ 2 (got {GroupSize}).");
    }
}

/// <summary>A tensor compressed by <see cref="GroupQuantizer"/>: codes plus a (step, min) pair per group.</summary>
public sealed class QuantizedTensor : IDisposable
{
    internal QuantizedTensor(Tensor codes, Tensor step, Tensor min, long[] shape, int dimension, ScalarType dtype, GroupQuantizationOptions options)
    {
        Codes = codes;
        Step = step;
        Min = min;
        Shape = shape;
        Dimension = dimension;
        DType = dtype;
        Options = options;
    }

    /// <summary>uint8 codes, [..., groups, groupSize / 2] for 2–4 bits (even element in the high nibble), [..., groups, groupSize] for 8.</summary>
    public Tensor Codes { get; }

    /// <summary>Quantization step (max − min) / (2^bits − 1) of each group, [..., groups, 1], in the original dtype.</summary>
    public Tensor Step { get; }

    /// <summary>Minimum of each group, [..., groups, 1], in the original dtype.</summary>
    public Tensor Min { get; }

    /// <summary>Shape of the original tensor.</summary>
    public long[] Shape { get; }

    /// <summary>The grouped dimension (non-negative).</summary>
    public int Dimension { get; }

    /// <summary>Type of the original tensor.</summary>
    public ScalarType DType { get; }

    /// <summary>The options it was made with.</summary>
    public GroupQuantizationOptions Options { get; }

    /// <summary>Bytes held (codes plus the per-group pairs).</summary>
    public long Bytes => Codes.NumberOfElements + (Step.NumberOfElements + Min.NumberOfElements) * Step.ElementSize;

    public void Dispose()
    {
        Codes.Dispose();
        Step.Dispose();
        Min.Dispose();
    }
}

/// <summary>
/// FlexGen's group-wise asymmetric quantization (Sheng et al. 2023, §5): for each group of G consecutive elements along one
/// dimension, with mn = min, mx = max: q = clamp(round((x − mn) / Δ), 0, 2^b − 1) where Δ = (mx − mn) / (2^b − 1), and
/// x̂ = q·Δ + mn. A dimension that is not a multiple of G is zero-padded (the pads join min/max, as in FlexGen) and trimmed
/// after dequantization. FlexGen stores the scale 1/Δ; Tern stores Δ, the same quantizer without an overflow to infinity
/// for near-constant groups; constant groups (Δ = 0) come back exactly. Works on any device, with TorchSharp ops.
/// </summary>
public static class GroupQuantizer
{
    /// <summary>Compresses <paramref name="x"/> (fp32, bf16 or fp16).</summary>
    public static QuantizedTensor Quantize(Tensor x, GroupQuantizationOptions? options = null)
    {
        options ??= new GroupQuantizationOptions();
        options.Validate();
        if (!x.is_floating_point()) throw new ArgumentException($"only floating-point tensors are quantized (got {x.dtype}).");
        int dim = options.Dimension < 0 ? options.Dimension + (int)x.dim() : options.Dimension;
        if (dim < 0 || dim >= x.dim()) throw new ArgumentException($"dimension {options.Dimension} does not exist in a tensor of {x.dim()} dimensions.");
        int g = options.GroupSize;
        using var scope = torch.NewDisposeScope();
        var moved = x.movedim(new long[] { dim }, new long[] { -1 }).to(ScalarType.Float32);
        long n = moved.size(-1), padded = (n + g - 1) / g * g;
        if (padded != n) moved = torch.nn.functional.pad(moved, new long[] { 0, padded - n });
        var groups = moved.reshape(moved.shape[..^1].Append(padded / g).Append(g).ToArray());
        var (step, mn) = Range(groups, options.Bits);
        var codes = Codes(groups, step, mn, options.Bits).to(ScalarType.Byte);
        if (options.Bits <= 4)
        {
            var pairs = codes.reshape(codes.shape[..^1].Append(g / 2).Append(2).ToArray());
            codes = (pairs.select(-1, 0) * 16 + pairs.select(-1, 1)).to(ScalarType.Byte); // even element in the high nibble
        }
        var result = new QuantizedTensor(codes.contiguous().MoveToOuterDisposeScope(), step.to(x.dtype).MoveToOuterDisposeScope(),
            mn.to(x.dtype).MoveToOuterDisposeScope(), x.shape.ToArray(), dim, x.dtype, options);
        return result;
    }

    /// <summary>The grid of each group of <paramref name="groups"/> (groups along the last dimension): step Δ = (max − min) /
    /// (2^bits − 1) and min, both [..., 1]. GPTQ and SparseGPT quantize on this grid too, so every method shares one quantizer.</summary>
    internal static (Tensor Step, Tensor Min) Range(Tensor groups, int bits)
    {
        var mn = groups.amin(new long[] { -1 }, keepdim: true);
        return ((groups.amax(new long[] { -1 }, keepdim: true) - mn) / ((1L << bits) - 1), mn);
    }

    /// <summary>q = clamp(round((x − min) / Δ), 0, 2^bits − 1), as floats; a constant group (Δ = 0) gets code 0 (x̂ = min exactly).</summary>
    internal static Tensor Codes(Tensor x, Tensor step, Tensor min, int bits)
    {
        var safeStep = torch.where(step.gt(0), step, torch.ones_like(step));
        return ((x - min) / safeStep).round().clamp(0, (1L << bits) - 1);
    }

    /// <summary>x̂ = q·Δ + min for q = <see cref="Codes"/>: <paramref name="x"/> rounded to its grid, unpacked.</summary>
    internal static Tensor RoundToGrid(Tensor x, Tensor step, Tensor min, int bits) => Codes(x, step, min, bits) * step + min;

    /// <summary>Restores an approximation of the original tensor, in its dtype and shape.</summary>
    public static Tensor Dequantize(QuantizedTensor q)
    {
        using var scope = torch.NewDisposeScope();
        var codes = q.Codes;
        if (q.Options.Bits <= 4)
            codes = torch.stack(new[] { codes.bitwise_right_shift(4), codes.bitwise_and(15) }, -1)
                .reshape(codes.shape[..^1].Append(codes.size(-1) * 2).ToArray());
        // x̂ = q·Δ + mn in one kernel, in the stored type: its products and sums run in fp32 and round once, as the fp32
        // formula converted at the end does (q·Δ is exact in fp32), with a fraction of the memory traffic.
        using var one = 1.ToScalar(); // disposed here, not by the finalizer (TorchSharp#1434)
        var groups = torch.addcmul(q.Min, codes.to(q.Min.dtype), q.Step, one);
        var flat = groups.reshape(groups.shape[..^2].Append(groups.size(-2) * groups.size(-1)).ToArray());
        long n = q.Shape[q.Dimension];
        var restored = flat.narrow(-1, 0, n).movedim(new long[] { -1 }, new long[] { q.Dimension }).to(q.DType).contiguous();
        return restored.MoveToOuterDisposeScope();
    }
}
