using System.Numerics;
using System.Text.Json;
using Tern.Checkpoints;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Distillation;

/// <summary>One distilled layer: its modal bank and the fit's relative ℓ2 error per filter.</summary>
/// <param name="Layer">The layer's index in the model.</param>
/// <param name="Filters">The modal bank (SH convention).</param>
/// <param name="RelativeError">‖h − ĥ‖₂ / ‖h‖₂ per filter.</param>
public sealed record DistilledLayer(int Layer, ModalFilters Filters, IReadOnlyList<double> RelativeError)
{
    /// <summary>The order each filter's Hankel spectrum suggests (<see cref="HankelSpectrum.Order"/>), when computed.</summary>
    public IReadOnlyList<int>? HankelOrders { get; init; }
    /// <summary>The fits of every order of a sweep, when the layer was swept.</summary>
    public OrderSweep? Sweep { get; init; }
}

/// <summary>
/// The distilled filters of a model folder: <c>modal.safetensors</c> (per layer i: <c>layers.i.poles</c> and
/// <c>layers.i.residues</c> F64 [C, S, 2] as (Re, Im) pairs, <c>layers.i.direct</c> F64 [C]; fp64 because they are few and
/// powers near |λ| = 1 need the digits) and <c>modal.json</c>, a report of orders and errors per layer and filter (with the
/// Hankel orders and an order sweep's errors when the distillation computed them).
/// </summary>
public static class ModalCheckpoint
{
    /// <summary>The tensors' file name.</summary>
    public const string WeightsFile = "modal.safetensors";
    /// <summary>The report's file name.</summary>
    public const string ReportFile = "modal.json";
    /// <summary>The convention, stored in the tensors' metadata and checked on load.</summary>
    public const string Convention = "h_t = Re sum_n R_n lambda_n^t + D [t = 0], t = 0, 1, ...";

    static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    /// <summary>Writes <paramref name="layers"/> into <paramref name="directory"/> (created if needed; both files replaced).</summary>
    public static void Save(string directory, IReadOnlyList<DistilledLayer> layers)
    {
        using var scope = torch.NewDisposeScope();
        var tensors = new List<(string, Tensor)>();
        foreach (var layer in layers)
        {
            var f = layer.Filters;
            tensors.Add(($"layers.{layer.Layer}.poles", torch.view_as_real(f.ComplexTensor(f.Poles))));
            tensors.Add(($"layers.{layer.Layer}.residues", torch.view_as_real(f.ComplexTensor(f.Residues))));
            tensors.Add(($"layers.{layer.Layer}.direct", torch.tensor(f.Direct.ToArray(), ScalarType.Float64)));
        }
        var metadata = new Dictionary<string, string> { ["convention"] = Convention };
        SafetensorsWriter.Write(Path.Combine(directory, WeightsFile), tensors, metadata);
        var report = layers.Select(l => new
        {
            layer = l.Layer, filters = l.Filters.Channels, modes = l.Filters.Modes,
            max_relative_error = l.RelativeError.Max(), mean_relative_error = l.RelativeError.Average(),
            relative_error = l.RelativeError,
            hankel_orders = l.HankelOrders,
            sweep = l.Sweep is { } sweep ? sweep.Modes.Select((m, k) => new { order = 2 * m, relative_error = sweep.RelativeError[k] }) : null,
        });
        AtomicFile.Write(Path.Combine(directory, ReportFile), s => JsonSerializer.Serialize(s, new { convention = Convention, layers = report }, Json));
    }

    /// <summary>
    /// Reads the banks of <paramref name="layers"/> from <paramref name="directory"/>. A missing file, layer or field, a shape
    /// that does not match, another convention, or a bank that <see cref="ModalFilters.Create"/> refuses (non-finite values,
    /// |λ| ≥ 1) throws an <see cref="InvalidDataException"/> naming the layer (and the filter and mode where one is at fault).
    /// </summary>
    public static IReadOnlyDictionary<int, ModalFilters> Load(string directory, IEnumerable<int> layers)
    {
        string path = Path.Combine(directory, WeightsFile);
        if (!File.Exists(path)) throw new InvalidDataException($"{directory}: no distilled filters ({WeightsFile} is missing).");
        using var file = SafetensorsFile.Open(path);
        if (!file.Metadata.TryGetValue("convention", out var convention) || convention != Convention)
            throw new InvalidDataException($"{path}: convention '{convention}' is not '{Convention}'.");
        var banks = new Dictionary<int, ModalFilters>();
        foreach (int layer in layers)
        {
            using var scope = torch.NewDisposeScope();
            string name = $"layer {layer}";
            Tensor Field(string field)
            {
                string key = $"layers.{layer}.{field}";
                if (!file.Contains(key)) throw new InvalidDataException($"{path}, {name}: no {field} ({key} is missing).");
                return file.Load(key, ScalarType.Float64);
            }
            var (poles, residues, direct) = (Field("poles"), Field("residues"), Field("direct"));
            if (poles.dim() != 3 || poles.size(2) != 2)
                throw new InvalidDataException($"{path}, {name}: poles are [{string.Join(", ", poles.shape)}], expected [filters, modes, 2].");
            if (!residues.shape.SequenceEqual(poles.shape))
                throw new InvalidDataException($"{path}, {name}: residues are [{string.Join(", ", residues.shape)}], poles [{string.Join(", ", poles.shape)}].");
            banks[layer] = ModalFilters.Create($"{path}, {name}", (int)poles.size(1), Complexes(poles), Complexes(residues), direct.data<double>().ToArray());
        }
        return banks;
    }

    static Complex[] Complexes(Tensor pairs)
    {
        var v = pairs.contiguous().data<double>().ToArray();
        return Enumerable.Range(0, v.Length / 2).Select(i => new Complex(v[2 * i], v[2 * i + 1])).ToArray();
    }
}
