using System.Text.Json;
using System.Text.Json.Serialization;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Sparsity;

/// <summary>One layer's predictors and how they trained.</summary>
/// <param name="Mlp">Neuron predictor, null for heads-only predictors.</param>
public sealed record LayerPredictors(LowRankPredictor? Mlp, PredictorStats? MlpStats, LowRankPredictor Heads, PredictorStats HeadStats) : IDisposable
{
    /// <inheritdoc />
    public void Dispose()
    {
        Mlp?.Dispose();
        Heads.Dispose();
    }
}

/// <summary>What <c>predictors.json</c> records: the model they are for, how they were trained, per-layer results.</summary>
public sealed record PredictorManifest
{
    /// <summary>The value of <see cref="Format"/>.</summary>
    public const string FormatName = "tern-dejavu-predictors";

    /// <summary>Marks the file as Tern's.</summary>
    [JsonPropertyName("format")] public string Format { get; init; } = FormatName;
    /// <summary>The model the predictors were trained for; loading checks it field by field.</summary>
    [JsonPropertyName("model")] public required ModelIdentity Model { get; init; }
    /// <summary>Layer ℓ's predictors read layer ℓ−1's input (<see cref="PredictorTrainer.SourceLayer"/>).</summary>
    [JsonPropertyName("lookahead")] public required bool Lookahead { get; init; }
    /// <summary>True when MLP neuron predictors are present.</summary>
    [JsonPropertyName("mlp")] public required bool Mlp { get; init; }
    /// <summary>The MLP predictors read the residual stream entering a layer's MLP block (after attention) rather than the layer's
    /// input (<see cref="PredictorTrainingOptions.MlpReadsMlpInput"/>); absent in older files: false.</summary>
    [JsonPropertyName("mlp_reads_mlp_input")] public bool MlpReadsMlpInput { get; init; }
    /// <summary>Rank of the MLP predictors (null without them).</summary>
    [JsonPropertyName("mlp_rank")] public int? MlpRank { get; init; }
    /// <summary>Rank of the head predictors.</summary>
    [JsonPropertyName("head_rank")] public required int HeadRank { get; init; }
    /// <summary>The head label fraction k the head predictors learned.</summary>
    [JsonPropertyName("head_fraction")] public required double HeadFraction { get; init; }
    /// <summary>Tokens of activations trained on (train and held-out split together).</summary>
    [JsonPropertyName("tokens")] public required int Tokens { get; init; }
    /// <summary>Per layer: the MLP and head predictors' held-out results.</summary>
    [JsonPropertyName("layers")] public IReadOnlyList<LayerStats> Layers { get; init; } = Array.Empty<LayerStats>();
}

/// <summary>One layer's entry in <c>predictors.json</c>.</summary>
public sealed record LayerStats(
    [property: JsonPropertyName("layer")] int Layer,
    [property: JsonPropertyName("mlp")] PredictorStats? Mlp,
    [property: JsonPropertyName("heads")] PredictorStats Heads);

/// <summary>
/// A model's DejaVu predictors, kept next to it as <c>&lt;model&gt;/sparsity/predictors.safetensors</c> (tensors
/// <c>layers.{ℓ}.mlp.a|b</c>, <c>layers.{ℓ}.heads.a|b</c>, fp32) and <c>predictors.json</c> (<see cref="PredictorManifest"/>).
/// </summary>
public sealed class SparsityPredictors : IDisposable
{
    /// <summary>Folder, under the model's, that holds the predictors.</summary>
    public const string Folder = "sparsity";
    /// <summary>Weights file name.</summary>
    public const string WeightsFile = "predictors.safetensors";
    /// <summary>Manifest file name.</summary>
    public const string ManifestFile = "predictors.json";

    const string Fix = "re-train the predictors for this model ('tern sparsity collect' then 'tern sparsity train')";

    /// <summary>Wraps trained predictors (taking ownership); <see cref="PredictorManifest.Layers"/> is filled from their stats.</summary>
    public SparsityPredictors(PredictorManifest manifest, IReadOnlyList<LayerPredictors> layers)
    {
        if (layers.Count != manifest.Model.Layers)
            throw new ArgumentException($"{layers.Count} layers of predictors for a model of {manifest.Model.Layers} layers.");
        Manifest = manifest with { Layers = layers.Select((l, i) => new LayerStats(i, l.MlpStats, l.HeadStats)).ToArray() };
        Layers = layers;
    }

    /// <summary>What the predictors are for and how they did.</summary>
    public PredictorManifest Manifest { get; }

    /// <summary>Per layer, in order.</summary>
    public IReadOnlyList<LayerPredictors> Layers { get; }

    /// <summary>Where predictors for the model in <paramref name="modelDirectory"/> live.</summary>
    public static string DirectoryOf(string modelDirectory) => Path.Combine(modelDirectory, Folder);

    /// <summary>Writes both files under <paramref name="modelDirectory"/>/sparsity, each atomically, the manifest last.</summary>
    public void Save(string modelDirectory)
    {
        string dir = DirectoryOf(modelDirectory);
        var tensors = new List<(string, Tensor)>();
        for (int i = 0; i < Layers.Count; i++)
        {
            if (Layers[i].Mlp is { } m) tensors.AddRange(new[] { ($"layers.{i}.mlp.a", m.A), ($"layers.{i}.mlp.b", m.B) });
            tensors.AddRange(new[] { ($"layers.{i}.heads.a", Layers[i].Heads.A), ($"layers.{i}.heads.b", Layers[i].Heads.B) });
        }
        SafetensorsWriter.Write(Path.Combine(dir, WeightsFile), tensors, new Dictionary<string, string> { ["tern"] = PredictorManifest.FormatName });
        AtomicFile.Write(Path.Combine(dir, ManifestFile), s => JsonSerializer.Serialize(s, Manifest, ActivationData.Json));
    }

    /// <summary>Loads the predictors saved next to <paramref name="model"/> (loaded from <paramref name="modelDirectory"/>), checked
    /// against it, onto the CPU.</summary>
    public static SparsityPredictors LoadFor(CausalLanguageModel model, string modelDirectory) =>
        Load(modelDirectory, ModelIdentity.Of(model.Config));

    /// <summary>Predictors of <paramref name="model"/>'s shape at the default ranks with random weights (normal, 1/√fan-in),
    /// never trained (their stats say so: no epochs, NaN results): for throughput measurements of models with dummy weights.</summary>
    public static SparsityPredictors Untrained(ModelIdentity model, Device device, long seed)
    {
        var (mlpRank, headRank) = PredictorTrainer.DefaultRanks(model);
        using var random = new torch.Generator((ulong)seed);
        LowRankPredictor Random(int rank, int outputs) => new(
            (torch.randn(new long[] { model.HiddenSize, rank }, generator: random) / Math.Sqrt(model.HiddenSize)).to(device).DetachFromDisposeScope(),
            (torch.randn(new long[] { rank, outputs }, generator: random) / Math.Sqrt(rank)).to(device).DetachFromDisposeScope());
        PredictorStats Stats(int layer, int rank) => new()
        {
            SourceLayer = PredictorTrainer.SourceLayer(layer, lookahead: true), Rank = rank, Epochs = 0, TrainLoss = Array.Empty<double>(),
            LabelWeight = double.NaN, Recall = double.NaN, Precision = double.NaN, K = 0, RecallAtK = double.NaN, TrueActive = double.NaN,
            PredictedActive = double.NaN,
        };
        var layers = Enumerable.Range(0, model.Layers).Select(l => new LayerPredictors(
            Random(mlpRank, model.IntermediateSize), Stats(l, mlpRank), Random(headRank, model.Heads), Stats(l, headRank))).ToArray();
        var manifest = new PredictorManifest
        {
            Model = model, Lookahead = true, Mlp = true, MlpRank = mlpRank, HeadRank = headRank, HeadFraction = double.NaN, Tokens = 0,
        };
        return new SparsityPredictors(manifest, layers);
    }

    /// <summary>A copy on <paramref name="device"/>, in <paramref name="dtype"/> (default: fp32 as saved); these stay as they are:
    /// where the model runs, so that a step's predictions never cross to the host.</summary>
    public SparsityPredictors To(Device device, ScalarType? dtype = null) => new(Manifest,
        Layers.Select(l => new LayerPredictors(l.Mlp?.To(device, dtype), l.MlpStats, l.Heads.To(device, dtype), l.HeadStats)).ToArray());

    /// <summary>Loads the predictors under <paramref name="modelDirectory"/>/sparsity onto the CPU, refusing (with the field and the
    /// fix) predictors made for another model than <paramref name="expected"/> or files that disagree with their manifest.</summary>
    public static SparsityPredictors Load(string modelDirectory, ModelIdentity expected)
    {
        string dir = DirectoryOf(modelDirectory), manifestPath = Path.Combine(dir, ManifestFile), weightsPath = Path.Combine(dir, WeightsFile);
        if (!File.Exists(manifestPath)) throw new FileNotFoundException($"{manifestPath} does not exist: train predictors with 'tern sparsity train --model {modelDirectory}'.");
        PredictorManifest manifest;
        try
        {
            manifest = JsonSerializer.Deserialize<PredictorManifest>(File.ReadAllText(manifestPath), ActivationData.Json)
                ?? throw new SparsityException($"{manifestPath}: empty; {Fix}.");
        }
        catch (JsonException e)
        {
            throw new SparsityException($"{manifestPath}: not a predictors manifest ({e.Message}); {Fix}.");
        }
        if (manifest.Format != PredictorManifest.FormatName)
            throw new SparsityException($"{manifestPath}: 'format' is '{manifest.Format}', expected '{PredictorManifest.FormatName}'; {Fix}.");
        manifest.Model.RequireSame(expected, manifestPath, "the predictors were", Fix);
        var m = manifest.Model;
        var layers = new List<LayerPredictors>();
        using var file = SafetensorsFile.Open(weightsPath);
        try
        {
            for (int i = 0; i < m.Layers; i++)
            {
                var stats = i < manifest.Layers.Count ? manifest.Layers[i] : throw new SparsityException($"{manifestPath}: 'layers' has {manifest.Layers.Count} entries for {m.Layers} layers; {Fix}.");
                var head = Read(file, $"layers.{i}.heads", m.HiddenSize, manifest.HeadRank, m.Heads, "num_attention_heads");
                LowRankPredictor? mlp = null;
                try { if (manifest.Mlp) mlp = Read(file, $"layers.{i}.mlp", m.HiddenSize, manifest.MlpRank ?? 0, m.IntermediateSize, "intermediate_size"); }
                catch { head.Dispose(); throw; }
                layers.Add(new LayerPredictors(mlp, stats.Mlp, head, stats.Heads));
            }
        }
        catch
        {
            foreach (var l in layers) l.Dispose();
            throw;
        }
        return new SparsityPredictors(manifest, layers);
    }

    static LowRankPredictor Read(SafetensorsFile file, string prefix, int hidden, int rank, int outputs, string field)
    {
        Tensor Get(string name, long rows, long cols, string what)
        {
            if (!file.TryGetInfo(name, out var info))
                throw new SparsityException($"{file.Path}: no tensor '{name}'; {Fix}.");
            if (info.Shape.Count != 2 || info.Shape[0] != rows || info.Shape[1] != cols)
                throw new SparsityException($"{file.Path}: '{name}' is [{string.Join(", ", info.Shape)}], expected [{rows}, {cols}] ({what}); {Fix}.");
            return file.Load(info, ScalarType.Float32);
        }
        var a = Get(prefix + ".a", hidden, rank, $"hidden_size {hidden} × rank {rank}");
        try { return new LowRankPredictor(a, Get(prefix + ".b", rank, outputs, $"rank {rank} × {field} {outputs}")); }
        catch { a.Dispose(); throw; }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var l in Layers) l.Dispose();
    }
}
