using System.Text.Json;
using System.Text.Json.Serialization;
using Tern.Checkpoints;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Sparsity;

/// <summary>One layer's collected activations, row i of each tensor being the same token.</summary>
/// <param name="Inputs">The residual stream entering the layer, [N, hidden] (bf16: half the bytes, no fp16 overflow).</param>
/// <param name="MlpActive">Which MLP neurons fire, bool [N, intermediate]; null when only heads were collected.</param>
/// <param name="HeadNorms">‖o_h‖ of each head's attention output before the output projection, fp32 [N, heads].</param>
/// <param name="MlpInputs">The residual stream entering the MLP block (after attention, before its norm), [N, hidden] bf16;
/// null when only heads were collected, or in folders of an older Tern.</param>
public sealed record LayerActivations(Tensor Inputs, Tensor? MlpActive, Tensor HeadNorms, Tensor? MlpInputs = null) : IDisposable
{
    /// <inheritdoc />
    public void Dispose()
    {
        Inputs.Dispose();
        MlpActive?.Dispose();
        HeadNorms.Dispose();
        MlpInputs?.Dispose();
    }
}

/// <summary>What <c>activations.json</c> records next to the per-layer safetensors files.</summary>
public sealed record ActivationManifest
{
    /// <summary>The model the activations came from.</summary>
    [JsonPropertyName("model")] public required ModelIdentity Model { get; init; }
    /// <summary>Token positions recorded per layer (the same tokens in every layer).</summary>
    [JsonPropertyName("tokens")] public required int Tokens { get; init; }
    /// <summary>Tokens per forward window.</summary>
    [JsonPropertyName("sequence_length")] public required int SequenceLength { get; init; }
    /// <summary>False when only attention heads were collected (a model without a ReLU MLP, or on request).</summary>
    [JsonPropertyName("mlp")] public required bool Mlp { get; init; }
}

/// <summary>
/// Per-layer activations of a model over a corpus (<see cref="ActivationCollector"/>), in memory or in a folder:
/// <c>activations.json</c> plus <c>layer-NNN.safetensors</c> (tensors <c>inputs</c>, <c>mlp_active</c>, <c>head_norms</c>,
/// <c>mlp_inputs</c>).
/// </summary>
public sealed class ActivationData : IDisposable
{
    /// <summary>The manifest's file name.</summary>
    public const string ManifestFile = "activations.json";

    internal static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    /// <summary>The data's shape and origin.</summary>
    public ActivationManifest Manifest { get; }

    /// <summary>Per layer, in order.</summary>
    public IReadOnlyList<LayerActivations> Layers { get; }

    /// <summary>Wraps collected tensors (taking ownership).</summary>
    public ActivationData(ActivationManifest manifest, IReadOnlyList<LayerActivations> layers)
    {
        if (layers.Count != manifest.Model.Layers)
            throw new ArgumentException($"{layers.Count} layers of activations for a model of {manifest.Model.Layers} layers.");
        Manifest = manifest;
        Layers = layers;
    }

    static string LayerFile(string directory, int layer) => Path.Combine(directory, $"layer-{layer:D3}.safetensors");

    /// <summary>Writes the folder: each layer's file atomically, then the manifest (last, so a folder with a manifest is whole).</summary>
    public void Save(string directory)
    {
        Directory.CreateDirectory(directory);
        for (int i = 0; i < Layers.Count; i++)
        {
            var l = Layers[i];
            var tensors = new List<(string, Tensor)> { ("inputs", l.Inputs), ("head_norms", l.HeadNorms) };
            if (l.MlpActive is { } active) tensors.Add(("mlp_active", active));
            if (l.MlpInputs is { } mlpInputs) tensors.Add(("mlp_inputs", mlpInputs));
            SafetensorsWriter.Write(LayerFile(directory, i), tensors);
        }
        AtomicFile.Write(Path.Combine(directory, ManifestFile), s => JsonSerializer.Serialize(s, Manifest, Json));
    }

    /// <summary>Reads a folder written by <see cref="Save"/> onto the CPU.</summary>
    public static ActivationData Load(string directory)
    {
        string manifestPath = Path.Combine(directory, ManifestFile);
        if (!File.Exists(manifestPath))
            throw new FileNotFoundException($"{manifestPath} does not exist: --data must be a folder written by 'tern sparsity collect'.");
        var manifest = JsonSerializer.Deserialize<ActivationManifest>(File.ReadAllText(manifestPath), Json)
            ?? throw new SparsityException($"{manifestPath}: empty manifest; collect the activations again.");
        var layers = new List<LayerActivations>();
        try
        {
            for (int i = 0; i < manifest.Model.Layers; i++)
            {
                string path = LayerFile(directory, i);
                if (!File.Exists(path)) throw new FileNotFoundException($"{path} is missing ({manifest.Model.Layers} layers expected); collect the activations again.");
                using var file = SafetensorsFile.Open(path);
                var l = new LayerActivations(file.Load("inputs"), manifest.Mlp ? file.Load("mlp_active") : null, file.Load("head_norms"),
                    file.TryGetInfo("mlp_inputs", out _) ? file.Load("mlp_inputs") : null);
                layers.Add(l);
                Check(path, "inputs", l.Inputs, manifest.Tokens, manifest.Model.HiddenSize, "hidden_size");
                Check(path, "head_norms", l.HeadNorms, manifest.Tokens, manifest.Model.Heads, "num_attention_heads");
                if (l.MlpActive is { } a) Check(path, "mlp_active", a, manifest.Tokens, manifest.Model.IntermediateSize, "intermediate_size");
                if (l.MlpInputs is { } m) Check(path, "mlp_inputs", m, manifest.Tokens, manifest.Model.HiddenSize, "hidden_size");
            }
        }
        catch
        {
            foreach (var l in layers) l.Dispose();
            throw;
        }
        return new ActivationData(manifest, layers);
    }

    static void Check(string path, string name, Tensor t, int tokens, int width, string field)
    {
        if (t.dim() != 2 || t.size(0) != tokens || t.size(1) != width)
            throw new SparsityException($"{path}: '{name}' is [{string.Join(", ", t.shape)}], expected [{tokens}, {width}] ({field} {width} in {ManifestFile}); collect the activations again.");
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var l in Layers) l.Dispose();
    }
}
