using System.Numerics;
using Tern.Distillation;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Distillation;

/// <summary>Synthetic filters for the distillation tests, from fixed seeds.</summary>
static class DistillationTestData
{
    /// <summary>A random stable bank: radii in [0.75, 0.97], angles in [0.1, 3.0] (or a real pole at θ = 0 for the first mode when
    /// <paramref name="realPole"/>), residues and direct terms N(0, 1).</summary>
    public static ModalFilters RandomBank(int channels, int modes, int seed, bool direct = true, bool realPole = false)
    {
        var random = new Random(seed);
        var poles = new Complex[channels * modes];
        var residues = new Complex[channels * modes];
        for (int i = 0; i < poles.Length; i++)
        {
            bool real = realPole && i % modes == 0;
            double r = 0.75 + 0.22 * random.NextDouble(), theta = real ? 0 : 0.1 + 2.9 * random.NextDouble();
            poles[i] = Complex.FromPolarCoordinates(r, theta);
            residues[i] = new Complex(Normal(random), real ? 0 : Normal(random));
        }
        var d = direct ? Enumerable.Range(0, channels).Select(_ => Normal(random)).ToArray() : null;
        return ModalFilters.Create("test", modes, poles, residues, d);
    }

    /// <summary>
    /// Hyena-like implicit filters [C, L] (brief §1.2): positional features [t_norm, cos(f_k ω_t), −sin(f_k ω_t)] (E = 33),
    /// FFN E→F→F→C with sin(w·x) activations (F = 32, w = <paramref name="sineFrequency"/>: 14 in safari's Pile config), times the exponential window exp(−|δ_c| t_norm) with δ spanning
    /// ln(1e−2)/1.5 … ln(1e−2)/0.3 over channels. Random N(0, 1/fan_in) weights from <paramref name="seed"/>; fp64.
    /// </summary>
    public static Tensor HyenaLikeFilters(int channels, int length, int seed, double sineFrequency = 14)
    {
        const int bands = 16, width = 32;
        double w = sineFrequency;
        using var scope = torch.NewDisposeScope();
        using var generator = new torch.Generator((ulong)seed);
        var tNorm = torch.linspace(0, 1, length, ScalarType.Float64).unsqueeze(1);
        var omega = torch.arange(length, ScalarType.Float64).unsqueeze(1) * (2 * Math.PI / length);
        var f = torch.linspace(1e-4, bands - 1, bands, ScalarType.Float64).unsqueeze(0);
        var z = torch.cat(new[] { tNorm, (f * omega).cos(), -(f * omega).sin() }, 1);            // [L, E]
        Tensor Layer(Tensor x, long outputs) =>
            x.matmul(torch.randn(new[] { x.shape[1], outputs }, ScalarType.Float64, generator: generator) / Math.Sqrt(x.shape[1]));
        var hidden = (Layer(z, width) * w).sin();
        hidden = (Layer(hidden, width) * w).sin();
        var h = Layer(hidden, channels).t();                                                       // [C, L]
        var delta = torch.linspace(Math.Log(1e-2) / 1.5, Math.Log(1e-2) / 0.3, channels, ScalarType.Float64).abs().unsqueeze(1);
        return (h * (-delta * tNorm.t()).exp()).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>‖a − b‖₂ / ‖b‖₂ in fp64.</summary>
    public static double RelativeError(Tensor a, Tensor b)
    {
        using var scope = torch.NewDisposeScope();
        var (x, y) = (a.to(ScalarType.Float64), b.to(ScalarType.Float64));
        return (x - y).norm().item<double>() / y.norm().item<double>();
    }

    static double Normal(Random random) =>
        Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
}
