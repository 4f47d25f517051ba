using System.Numerics;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Distillation;

/// <summary>
/// A bank of C real filters in modal form, SH convention (brief §1.4): ĥ_t = Re Σ_{n&lt;S} R_n λ_n^t + D·[t = 0], t = 0, 1, …
/// Each complex mode stands for a conjugate pair (its conjugate is not stored or added again, pitfall 9); a real pole is a mode
/// with Im λ = 0. Poles lie strictly inside the unit disc (checked by <see cref="Create"/>). The Hyena skip β is not part of it.
/// </summary>
public sealed class ModalFilters
{
    ModalFilters(int channels, int modes, Complex[] poles, Complex[] residues, double[] direct)
    {
        (Channels, Modes, Poles, Residues, Direct) = (channels, modes, poles, residues, direct);
    }

    /// <summary>C, the number of filters.</summary>
    public int Channels { get; }
    /// <summary>S, the complex modes per filter (state order d ≤ 2S real).</summary>
    public int Modes { get; }
    /// <summary>λ, [C·S] row-major (filter c's modes at c·S..c·S+S−1), |λ| &lt; 1.</summary>
    public IReadOnlyList<Complex> Poles { get; }
    /// <summary>R, [C·S] row-major.</summary>
    public IReadOnlyList<Complex> Residues { get; }
    /// <summary>D, the direct term per filter (added to tap 0 only), [C].</summary>
    public IReadOnlyList<double> Direct { get; }

    /// <summary>
    /// Validates and wraps a bank. A missing or short field, a non-finite value or an unstable pole (|λ| ≥ 1: the recurrence
    /// would grow past the trained window) is refused with an <see cref="InvalidDataException"/> naming
    /// <paramref name="layer"/>, the filter and the mode.
    /// </summary>
    /// <param name="layer">Where the bank comes from, for errors (e.g. "layer 3").</param>
    /// <param name="modes">S.</param>
    /// <param name="poles">λ, [C·S] row-major.</param>
    /// <param name="residues">R, [C·S] row-major.</param>
    /// <param name="direct">D, [C]; null for none (all zero).</param>
    public static ModalFilters Create(string layer, int modes, Complex[]? poles, Complex[]? residues, double[]? direct = null)
    {
        if (modes < 1) throw new InvalidDataException($"{layer}: the modal bank needs at least one mode per filter (found {modes}).");
        if (poles is null || poles.Length == 0) throw new InvalidDataException($"{layer}: the modal bank has no poles.");
        if (poles.Length % modes != 0)
            throw new InvalidDataException($"{layer}: {poles.Length} poles do not split into filters of {modes} modes.");
        int channels = poles.Length / modes;
        if (residues is null || residues.Length != poles.Length)
            throw new InvalidDataException($"{layer}: {residues?.Length ?? 0} residues for {poles.Length} poles ({channels} filters × {modes} modes).");
        direct ??= new double[channels];
        if (direct.Length != channels)
            throw new InvalidDataException($"{layer}: {direct.Length} direct terms for {channels} filters.");
        for (int c = 0; c < channels; c++)
        {
            if (!double.IsFinite(direct[c])) throw new InvalidDataException($"{layer}, filter {c}: the direct term is {direct[c]}.");
            for (int n = 0; n < modes; n++)
            {
                Complex p = poles[c * modes + n], r = residues[c * modes + n];
                if (!double.IsFinite(p.Real) || !double.IsFinite(p.Imaginary))
                    throw new InvalidDataException($"{layer}, filter {c}: pole {n} is missing or not finite ({p}).");
                if (p.Magnitude >= 1)
                    throw new InvalidDataException($"{layer}, filter {c}: pole {n} has |λ| = {p.Magnitude:R} ≥ 1 (unstable: the recurrence would not decay).");
                if (!double.IsFinite(r.Real) || !double.IsFinite(r.Imaginary))
                    throw new InvalidDataException($"{layer}, filter {c}: residue {n} is not finite ({r}).");
            }
        }
        return new ModalFilters(channels, modes, poles, residues, direct);
    }

    /// <summary>The modal kernel ĥ [C, <paramref name="length"/>] in fp64 on <paramref name="device"/> (the CPU by default),
    /// in the caller's dispose scope.</summary>
    public Tensor Kernel(int length, Device? device = null)
    {
        using var scope = torch.NewDisposeScope();
        device ??= CPU;
        var (pole, residue) = (ComplexTensor(Poles).to(device), ComplexTensor(Residues).to(device));
        var (re, im) = PowersOf(pole, torch.arange(length, ScalarType.Float64, device));  // λ^t, [C, S, L]
        var h = (residue.real.unsqueeze(-1) * re - residue.imag.unsqueeze(-1) * im).sum(1); // Re(R λ^t) summed over modes
        h.select(1, 0).add_(torch.tensor(Direct.ToArray(), ScalarType.Float64).to(device));
        return h.MoveToOuterDisposeScope();
    }

    /// <summary>[C, S] complex128 on the CPU of a row-major list.</summary>
    internal Tensor ComplexTensor(IReadOnlyList<Complex> values)
    {
        var re = torch.tensor(values.Select(v => v.Real).ToArray(), ScalarType.Float64).view(Channels, Modes);
        var im = torch.tensor(values.Select(v => v.Imaginary).ToArray(), ScalarType.Float64).view(Channels, Modes);
        return torch.complex(re, im);
    }

    /// <summary>
    /// Re and Im of λ^t for poles [..] (complex) and exponents t [T] (fp64), [.., T] each: exp(t·ln|λ|)·(cos, sin)(t·arg λ), in
    /// fp64 (pitfall 6: powers near |λ| = 1 at t ~ 2048 need the precision). λ = 0 gives λ^0 = 1 and 0 after.
    /// </summary>
    internal static (Tensor Re, Tensor Im) PowersOf(Tensor poles, Tensor t)
    {
        var p = poles.to(ScalarType.ComplexFloat64);
        var logR = p.abs().clamp_min(1e-300).log().unsqueeze(-1);
        var angle = p.angle().unsqueeze(-1) * t;
        var magnitude = (logR * t).exp();
        return (magnitude * angle.cos(), magnitude * angle.sin());
    }
}
