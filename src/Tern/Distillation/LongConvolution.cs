using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Distillation;

/// <summary>
/// Hyena's long causal convolution y_t = Σ_{s=0..t} h_s · w_{t−s} (brief §1.2), by FFT: Y = irfft(rfft(w, n) ⊙ rfft(h, n))[0..L−1]
/// with n the next power of two ≥ 2L. Time runs along the last dimension (safari's [B, D, L] layout).
/// </summary>
public static class LongConvolution
{
    /// <summary>The FFT size for length <paramref name="length"/>: the next power of two ≥ 2L. Zero padding to ≥ 2L keeps the
    /// circular wrap of the DFT out of the first L outputs (pitfall 10).</summary>
    public static long FftSize(long length)
    {
        if (length < 1) throw new ArgumentOutOfRangeException(nameof(length), length, "the sequence length must be positive.");
        long n = 1;
        while (n < 2 * length) n <<= 1;
        return n;
    }

    /// <summary>
    /// The causal convolution of <paramref name="input"/> [.., L] with <paramref name="filter"/> [.., L'] (L' ≥ L; only its first
    /// L taps are used), broadcast over the leading dimensions. Computed in fp32 (fp64 when either operand is fp64: the FFT has no
    /// 16-bit kernels on the CPU) and returned in the input's type, in the caller's dispose scope.
    /// </summary>
    public static Tensor Causal(Tensor input, Tensor filter)
    {
        long length = input.size(-1);
        if (filter.size(-1) < length)
            throw new ArgumentException($"the filter has {filter.size(-1)} taps, fewer than the input's {length} steps.", nameof(filter));
        using var scope = torch.NewDisposeScope();
        var type = input.dtype == ScalarType.Float64 || filter.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        long n = FftSize(length);
        var spectrum = fft.rfft(input.to(type), n) * fft.rfft(filter.narrow(-1, 0, length).to(type), n);
        var y = fft.irfft(spectrum, n).narrow(-1, 0, length).to(input.dtype);
        return y.MoveToOuterDisposeScope();
    }
}
