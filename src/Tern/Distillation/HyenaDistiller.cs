using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Models.Hyena;
using Tern.Runtime;
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
    /// <summary>An order sweep instead of one order: every layer is fitted at each S (ascending, <see cref="ModalFit.Sweep"/>)
    /// and keeps the smallest whose worst filter meets <see cref="MaxError"/> (the largest when none does).</summary>
    public IReadOnlyList<int>? SweepModes { get; init; }
    /// <summary>The relative ℓ2 error a sweep's chosen order must reach on every filter of the layer.</summary>
    public double MaxError { get; init; } = 1e-2;
    /// <summary>With a sweep, <see cref="HyenaDistiller.DistillModel"/> also writes one model folder per order
    /// (<c>order-d</c> inside the output folder, every layer at that order): the quality-against-order curve from one sweep.</summary>
    public bool WriteEachOrder { get; init; }
}

/// <summary>A layer's fits at each order of a sweep.</summary>
/// <param name="Modes">S of each fit, ascending.</param>
/// <param name="RelativeError">Per fit, the relative ℓ2 error of each filter.</param>
/// <param name="Fits">Per fit, the modal bank.</param>
public sealed record OrderSweep(IReadOnlyList<int> Modes, IReadOnlyList<IReadOnlyList<double>> RelativeError, IReadOnlyList<ModalFilters> Fits);

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
        var filters = layer.Filters(layer.Options.MaxLength)[0].detach(); // the fit differentiates its own parameters only
        int size = Math.Min(options.HankelSize, (int)(filters.size(1) + 1) / 2);
        var hankelOrders = HankelSpectrum.Compute(filters, size).Select(s => s.Order(options.HankelTolerance)).ToArray();
        if (options.SweepModes is { } sweep)
        {
            var fits = ModalFit.Sweep(filters, sweep, options.Fit, $"layer {index}");
            var pick = fits.FirstOrDefault(f => f.RelativeError.Max() <= options.MaxError) ?? fits[^1];
            return new DistilledLayer(index, pick.Filters, pick.RelativeError)
            {
                HankelOrders = hankelOrders,
                Sweep = new OrderSweep(sweep, fits.Select(f => (IReadOnlyList<double>)f.RelativeError).ToArray(), fits.Select(f => f.Filters).ToArray()),
            };
        }
        int modes = options.Modes ?? Math.Clamp((hankelOrders.Max() + 1) / 2, 1, options.MaxModes);
        var fit = ModalFit.Fit(filters, options.Fit with { Modes = modes }, $"layer {index}");
        return new DistilledLayer(index, fit.Filters, fit.RelativeError) { HankelOrders = hankelOrders };
    }

    /// <summary>
    /// Distils every layer of the MultiHyena model in <paramref name="modelDirectory"/> and writes a distilled model folder at
    /// <paramref name="outputDirectory"/>, atomically (<see cref="AtomicFolder"/>): the model's files, config.json with a
    /// <c>distilled</c> section, and the banks (<see cref="ModalCheckpoint"/>). <paramref name="progress"/> hears of each layer
    /// as it starts and ends. Refuses another architecture, or a model already distilled.
    /// </summary>
    public static IReadOnlyList<DistilledLayer> DistillModel(string modelDirectory, string outputDirectory, HyenaDistillOptions options,
        Action<string>? progress = null)
    {
        using var model = CausalLanguageModel.Load(modelDirectory, new ModelLoadOptions { Device = DeviceKind.Cpu });
        if (model is not MultiHyenaModel hyena)
            throw new ArgumentException($"{modelDirectory}: a {model.Info.ModelType} model has no long convolutions to distil; this takes a multihyena model.");
        if (hyena.Distilled) throw new ArgumentException($"{modelDirectory}: the model is distilled already; distil the original model.");
        var layers = new List<DistilledLayer>();
        for (int i = 0; i < model.Info.Layers; i++)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            progress?.Invoke($"layer {i + 1}/{model.Info.Layers}: fitting {hyena.Mixer.Heads} filters of {hyena.Mixer.MaxLength} taps…");
            using var op = hyena.Operator(i);
            var layer = DistillLayer(op, i, options);
            layers.Add(layer);
            progress?.Invoke($"layer {i + 1}/{model.Info.Layers}: order {2 * layer.Filters.Modes} (S = {layer.Filters.Modes}), worst filter error {layer.RelativeError.Max():E2}, {clock.Elapsed.TotalSeconds:F1} s");
        }
        if (options.WriteEachOrder && options.SweepModes is { } sweep)
        {
            // The chosen model at the top, and one folder per order of the sweep inside it.
            var each = sweep.Select((modes, k) => (Order: 2 * modes,
                Layers: layers.Select(l => new DistilledLayer(l.Layer, l.Sweep!.Fits[k], l.Sweep.RelativeError[k]) { HankelOrders = l.HankelOrders }).ToArray())).ToArray();
            Write(model, modelDirectory, outputDirectory, layers, temp =>
            {
                foreach (var (order, orderLayers) in each) Write(model, modelDirectory, Path.Combine(temp, $"order-{order}"), orderLayers, null);
            });
        }
        else Write(model, modelDirectory, outputDirectory, layers, null);
        return layers;
    }

    /// <summary>A distilled model folder, atomically: the original's weights and companions, config.json with the
    /// <c>distilled</c> section, the banks; <paramref name="more"/> adds files to the folder before it is moved in place.</summary>
    static void Write(CausalLanguageModel model, string modelDirectory, string outputDirectory, IReadOnlyList<DistilledLayer> layers, Action<string>? more) =>
        AtomicFolder.Write(outputDirectory, temp =>
        {
            foreach (string file in Directory.EnumerateFiles(modelDirectory))
            {
                string name = Path.GetFileName(file);
                if (name.EndsWith(".safetensors", StringComparison.Ordinal) && name != ModalCheckpoint.WeightsFile || name.EndsWith(".safetensors.index.json", StringComparison.Ordinal))
                    File.Copy(file, Path.Combine(temp, name));
            }
            var config = model.Config.Json.DeepClone().AsObject();
            config[MultiHyenaModel.DistilledKey] = new JsonObject
            {
                ["modes"] = new JsonArray(layers.Select(l => (JsonNode)l.Filters.Modes).ToArray()),
                ["max_relative_error"] = new JsonArray(layers.Select(l => (JsonNode)l.RelativeError.Max()).ToArray()),
            };
            CheckpointExport.WriteCompanions(modelDirectory, temp, config, null);
            ModalCheckpoint.Save(temp, layers);
            more?.Invoke(temp);
        });

    /// <summary>Distils <paramref name="layers"/> (layer i is index i) and writes them into <paramref name="directory"/>.</summary>
    public static IReadOnlyList<DistilledLayer> Distill(IReadOnlyList<HyenaOperator> layers, string directory, HyenaDistillOptions options)
    {
        var distilled = layers.Select((layer, i) => DistillLayer(layer, i, options)).ToArray();
        ModalCheckpoint.Save(directory, distilled);
        return distilled;
    }
}
