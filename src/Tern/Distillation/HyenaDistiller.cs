using Tern.Models.Hyena;
using TorchSharp;

namespace Tern.Distillation;

/// <summary>How <see cref="HyenaDistiller"/> picks orders and fits.</summary>
public sealed record HyenaDistillOptions
{
    /// <summary>ε of the per-layer order rule (brief §1.4): S = ⌈d/2⌉ for the smallest d with σ_d/σ_0 &lt; ε on every filter of the
    /// layer (Hankel spectrum), capped by <see cref="MaxModes"/>. Ignored when <see cref="Modes"/> is set.</summary>
    public double HankelTolerance { get; init; } = 1e-3;
    /// <summary>A fixed S for every layer instead of the Hankel rule.</summary>
    public int? Modes { get; init; }
    /// <summary>The largest S the Hankel rule may pick.</summary>
    public int MaxModes { get; init; } = 32;
    /// <summary>Cap on the Hankel matrix's side for the order rule (a dense SVD per filter).</summary>
    public int HankelSize { get; init; } = 256;
    /// <summary>The fit's settings (its <see cref="ModalFitOptions.Modes"/> is replaced by the chosen S).</summary>
    public ModalFitOptions Fit { get; init; } = new();
}

/// <summary>
/// Distils order-2 Hyena / MultiHyena layers (brief §1.4's pipeline): per layer, the post-window filters actually convolved, an
/// order from their Hankel spectra, a modal fit of every filter (β is kept exactly by the operator, not fitted), the error per
/// filter; the banks go to <c>modal.safetensors</c> + <c>modal.json</c> (<see cref="ModalCheckpoint"/>).
/// </summary>
public static class HyenaDistiller
{
    /// <summary>Distils one layer, named <paramref name="index"/> in errors and files.</summary>
    public static DistilledLayer DistillLayer(HyenaOperator layer, int index, HyenaDistillOptions options)
    {
        if (layer.Options.Order != 2)
            throw new NotSupportedException($"layer {index}: distillation is implemented for order-2 Hyena (one long convolution), not order {layer.Options.Order}.");
        using var scope = torch.NewDisposeScope();
        var filters = layer.Filters(layer.Options.MaxLength)[0];
        int modes = options.Modes ?? Math.Clamp(HankelModes(filters, options), 1, options.MaxModes);
        var fit = ModalFit.Fit(filters, options.Fit with { Modes = modes }, $"layer {index}");
        return new DistilledLayer(index, fit.Filters, fit.RelativeError);
    }

    /// <summary>Distils <paramref name="layers"/> (layer i is index i) and writes them into <paramref name="directory"/>.</summary>
    public static IReadOnlyList<DistilledLayer> Distill(IReadOnlyList<HyenaOperator> layers, string directory, HyenaDistillOptions options)
    {
        var distilled = layers.Select((layer, i) => DistillLayer(layer, i, options)).ToArray();
        ModalCheckpoint.Save(directory, distilled);
        return distilled;
    }

    /// <summary>⌈d/2⌉ for the largest Hankel order over the layer's filters [C, L].</summary>
    static int HankelModes(torch.Tensor filters, HyenaDistillOptions options)
    {
        int size = Math.Min(options.HankelSize, (int)(filters.shape[1] + 1) / 2);
        int order = HankelSpectrum.Compute(filters, size).Max(s => s.Order(options.HankelTolerance));
        return (order + 1) / 2;
    }
}
