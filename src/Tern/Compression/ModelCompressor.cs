using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Compression;

/// <summary>The post-training compression methods of <see cref="ModelCompressor"/>.</summary>
public enum CompressionMethod
{
    /// <summary>Round to nearest on the <see cref="GroupQuantizer"/> grid, no calibration (the baseline).</summary>
    Rtn,
    /// <summary><see cref="Gptq"/> quantization.</summary>
    Gptq,
    /// <summary><see cref="SparseGpt"/> pruning, optionally with joint quantization.</summary>
    SparseGpt,
}

/// <summary>How <see cref="ModelCompressor"/> compresses a model (defaults: Compress-Then-Prompt's recipes, 4-bit GPTQ).</summary>
public sealed record CompressionOptions
{
    /// <summary>The method.</summary>
    public CompressionMethod Method { get; init; } = CompressionMethod.Gptq;
    /// <summary>Bits per weight (RTN, GPTQ); SparseGPT quantizes jointly when non-zero.</summary>
    public int Bits { get; init; } = 4;
    /// <summary>Input columns per quantization grid; 0: one grid per output row.</summary>
    public int GroupSize { get; init; }
    /// <summary>GPTQ's act-order.</summary>
    public bool ActOrder { get; init; } = true;
    /// <summary>Compress one linear map of a layer at a time, each calibrated on inputs through the maps already compressed
    /// (GPTQ's true-sequential); false: all maps of a layer from one pass.</summary>
    public bool TrueSequential { get; init; } = true;
    /// <summary>Hessian damping, a fraction of mean(diag H).</summary>
    public double Damping { get; init; } = 0.01;
    /// <summary>SparseGPT's fraction of zero weights.</summary>
    public double Sparsity { get; init; } = 0.5;
    /// <summary>Calibration sequences (the recipes: 128).</summary>
    public int CalibrationSamples { get; init; } = 128;
    /// <summary>Tokens per calibration sequence (capped by the model's context).</summary>
    public int CalibrationLength { get; init; } = 2048;
    /// <summary>Seed of the random calibration windows (the recipes: 0).</summary>
    public int Seed { get; init; }
    /// <summary>Calibration sequences per forward pass.</summary>
    public int BatchSize { get; init; } = 4;

    /// <summary>A short name, e.g. "gptq-3bit", "sparsegpt-50%+4bit".</summary>
    public string Name => Method switch
    {
        CompressionMethod.SparseGpt => $"sparsegpt-{Sparsity * 100:0.#}%" + (Bits > 0 ? $"+{Bits}bit" : ""),
        _ => $"{Method.ToString().ToLowerInvariant()}-{Bits}bit",
    } + (GroupSize > 0 ? $"-g{GroupSize}" : "");

    internal void Validate()
    {
        if (Method != CompressionMethod.SparseGpt || Bits != 0)
            if (Bits is not (2 or 3 or 4 or 8)) throw new OptionException($"{TernOption.CompressBits} must be 2, 3, 4 or 8 (got {Bits}).");
        if (GroupSize < 0 || GroupSize % 2 != 0) throw new OptionException($"{TernOption.CompressGroupSize} must be 0 (per row) or an even number of columns (got {GroupSize}).");
        if (Method == CompressionMethod.Rtn) return;
        if (CalibrationSamples < 1) throw new OptionException($"{TernOption.CalibrationSamples} must be at least 1 (got {CalibrationSamples}).");
        if (CalibrationLength < 2) throw new OptionException($"{TernOption.CalibrationLength} must be at least 2 tokens (got {CalibrationLength}).");
        if (BatchSize < 1) throw new ArgumentException($"the calibration batch size must be positive (got {BatchSize}).");
    }
}

/// <summary>What a compression did to one weight (a Hugging Face tensor, e.g. one of the fused q/k/v).</summary>
/// <param name="Loss">The solver's OBS loss (0 for RTN).</param>
/// <param name="RelativeError">‖W − Ŵ‖ / ‖W‖.</param>
/// <param name="Zeros">Fraction of exactly-zero weights after compression.</param>
public sealed record CompressedTensorReport(string Name, long Elements, double Loss, double RelativeError, double Zeros);

/// <summary>The outcome of <see cref="ModelCompressor.Run"/>.</summary>
public sealed record CompressionReport(CompressionOptions Options, int CalibrationSamples, int CalibrationLength,
    IReadOnlyList<CompressedTensorReport> Tensors, double Seconds)
{
    /// <summary>Fraction of zero weights over every compressed tensor.</summary>
    public double Zeros { get; init; }
}

/// <summary>
/// Post-training compression of a loaded model's decoder layers (embeddings, norms and the LM head stay dense, as in GPTQ
/// and SparseGPT): layer by layer, the calibration sequences' hidden states run through the layer while every linear map's
/// input is observed (<see cref="PartWeights.LinearInputs"/>), each map is compressed against its Hessian, and the outputs of
/// the compressed layer become the next layer's inputs. Weights are replaced in place, dense: the written folder is an
/// ordinary checkpoint that Tern and transformers load as is (dequantized values; no packed storage yet).
/// </summary>
public static class ModelCompressor
{
    /// <summary>The file that records how a compressed folder was made.</summary>
    public const string ManifestFile = "compression.json";

    /// <summary>Compresses <paramref name="model"/> in place. <paramref name="calibration"/>: a token stream random windows are
    /// cut from (unused by RTN). The model must be loaded <see cref="ModelLoadOptions.Trainable"/> (for the parameter names
    /// of fused weights); it is not trained.</summary>
    public static CompressionReport Run(CausalLanguageModel model, IReadOnlyList<int> calibration, CompressionOptions options,
        IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        options.Validate();
        var clock = Stopwatch.StartNew();
        using var noGrad = torch.no_grad();
        var reports = new List<CompressedTensorReport>();
        int length = Math.Min(options.CalibrationLength, model.Info.MaxPositions);
        var windows = options.Method == CompressionMethod.Rtn ? new List<Tensor>() : CalibrationWindows(calibration, options, length);
        try
        {
            var hidden = windows.Select(ids => model.RunStage(0, model.Parts[0], null, Batch(model, ids), null).DetachFromDisposeScope()).ToList();
            using var caches = new CacheSet(model, length);
            for (int layer = 0; layer < model.Info.Layers; layer++)
            {
                cancellation.ThrowIfCancellationRequested();
                var part = model.Parts[layer + 1];
                int before = reports.Count;
                var names = LinearNames(model, layer, windows.Count > 0 ? (windows[0], hidden[0]) : null, caches);
                var groups = options.TrueSequential || options.Method == CompressionMethod.Rtn ? names.Select(n => new[] { n }).ToArray() : new[] { names };
                foreach (var group in groups)
                {
                    var hessians = options.Method == CompressionMethod.Rtn ? null : Calibrate(model, layer, group, windows, hidden, caches);
                    try
                    {
                        foreach (string name in group)
                            reports.AddRange(CompressLinear(model, part, name, hessians?[name], options));
                    }
                    finally
                    {
                        if (hessians is not null) foreach (var h in hessians.Values) h.Dispose();
                    }
                }
                // The next layer calibrates on what this compressed layer outputs.
                for (int k = 0; k < windows.Count; k++)
                {
                    using var scope = torch.NewDisposeScope();
                    var next = model.RunStage(layer + 1, part, hidden[k], Batch(model, windows[k]), caches.Layer(windows[k], layer));
                    hidden[k].Dispose();
                    hidden[k] = next.DetachFromDisposeScope();
                }
                progress?.Report($"layer {layer + 1}/{model.Info.Layers}: {string.Join(", ", reports.Skip(before).Select(r => $"{ShortName(r.Name)} err {r.RelativeError:F3}"))}");
            }
            foreach (var h in hidden) h.Dispose();
        }
        finally
        {
            foreach (var w in windows) w.Dispose();
        }
        long total = reports.Sum(r => r.Elements);
        double zeros = reports.Sum(r => r.Zeros * r.Elements);
        return new CompressionReport(options, windows.Count, length, reports, clock.Elapsed.TotalSeconds) { Zeros = total == 0 ? 0 : zeros / total };
    }

    /// <summary>Writes <paramref name="model"/> (after <see cref="Run"/>) as a model folder at <paramref name="destination"/>,
    /// atomically: everything goes to a temporary folder beside it that is renamed at the end. Weights in
    /// <paramref name="dtype"/> (fp32 keeps the compressed values exact), companions (tokenizer, generation config) from
    /// <paramref name="source"/>, and <see cref="ManifestFile"/>.</summary>
    public static void Save(CausalLanguageModel model, string source, string destination, CompressionReport report, ModelDType dtype)
    {
        AtomicFolder.Write(destination, temp =>
        {
            using (var scope = torch.NewDisposeScope())
            using (torch.no_grad())
            {
                var tensors = model.StateDict().Select(t => (t.Name, t.Tensor.to(dtype.ToScalarType(), torch.CPU).contiguous())).ToArray();
                SafetensorsWriter.Write(Path.Combine(temp, CheckpointReader.SingleFileName), tensors,
                    new Dictionary<string, string> { ["tern_compression"] = report.Options.Name });
            }
            CheckpointExport.WriteCompanions(source, temp, (JsonObject)model.Config.Json.DeepClone(), dtype);
            AtomicFile.Write(Path.Combine(temp, ManifestFile), s => JsonSerializer.Serialize(s, Manifest(report), new JsonSerializerOptions { WriteIndented = true }));
        });
    }

    static JsonObject Manifest(CompressionReport r) => new()
    {
        ["method"] = r.Options.Method.ToString().ToLowerInvariant(),
        ["name"] = r.Options.Name,
        ["bits"] = r.Options.Bits,
        ["group_size"] = r.Options.GroupSize,
        ["act_order"] = r.Options.Method == CompressionMethod.Gptq ? r.Options.ActOrder : null,
        ["true_sequential"] = r.Options.Method == CompressionMethod.Rtn ? null : r.Options.TrueSequential,
        ["damping"] = r.Options.Method == CompressionMethod.Rtn ? null : r.Options.Damping,
        ["sparsity"] = r.Options.Method == CompressionMethod.SparseGpt ? r.Options.Sparsity : null,
        ["calibration_samples"] = r.CalibrationSamples,
        ["calibration_length"] = r.CalibrationLength,
        ["seed"] = r.Options.Seed,
        ["zeros"] = r.Zeros,
        ["storage"] = "dense: dequantized values, loaded as any checkpoint",
        ["seconds"] = Math.Round(r.Seconds, 1),
        ["tensors"] = new JsonArray(r.Tensors.Select(t => (JsonNode)new JsonObject
        {
            ["name"] = t.Name, ["loss"] = t.Loss, ["relative_error"] = t.RelativeError, ["zeros"] = t.Zeros,
        }).ToArray()),
    };

    /// <summary>Random windows of <paramref name="length"/> tokens, seeded (GPTQ's sampling of calibration sequences), int64 [1, T].</summary>
    static List<Tensor> CalibrationWindows(IReadOnlyList<int> tokens, CompressionOptions options, int length)
    {
        if (tokens.Count < length + 1)
            throw new OptionException($"{TernOption.CalibrationLength} {length} needs more calibration text: it holds {tokens.Count} tokens.");
        var random = new Random(options.Seed);
        var windows = new List<Tensor>();
        for (int s = 0; s < options.CalibrationSamples; s += options.BatchSize)
        {
            int b = Math.Min(options.BatchSize, options.CalibrationSamples - s);
            var ids = new long[b * length];
            for (int r = 0; r < b; r++)
            {
                int start = random.Next(tokens.Count - length);
                for (int t = 0; t < length; t++) ids[r * length + t] = tokens[start + t];
            }
            windows.Add(torch.tensor(ids, new long[] { b, length }).DetachFromDisposeScope());
        }
        return windows;
    }

    static ForwardBatch Batch(CausalLanguageModel model, Tensor ids)
    {
        int b = (int)ids.size(0), t = (int)ids.size(1);
        return new ForwardBatch
        {
            InputIds = ids.to(model.Device),
            Positions = torch.arange(t, ScalarType.Int64, model.Device).unsqueeze(0).expand(b, t).contiguous(),
            RealTokens = Enumerable.Repeat(t, b).ToArray(),
            MaxPosition = t - 1,
        };
    }

    /// <summary>The linear maps layer <paramref name="layer"/> runs, in the order it runs them (found by running it once on
    /// one calibration batch, or on a single token for RTN).</summary>
    static string[] LinearNames(CausalLanguageModel model, int layer, (Tensor Ids, Tensor Hidden)? sample, CacheSet caches)
    {
        var names = new List<string>();
        var part = model.Parts[layer + 1];
        var observed = part.With(part.Tensors, (name, _) => { if (!names.Contains(name)) names.Add(name); });
        using var scope = torch.NewDisposeScope();
        var ids = sample?.Ids ?? torch.zeros(1, 1, ScalarType.Int64);
        var input = sample?.Hidden ?? torch.zeros(1, 1, model.Info.HiddenSize, model.DType.ToScalarType(), model.Device);
        model.RunStage(layer + 1, observed, input, Batch(model, ids), caches.Layer(ids, layer));
        return names.ToArray();
    }

    /// <summary>Hessians of the maps in <paramref name="group"/> from one pass of every calibration batch through the layer.</summary>
    static Dictionary<string, Tensor> Calibrate(CausalLanguageModel model, int layer, string[] group, List<Tensor> windows, List<Tensor> hidden, CacheSet caches)
    {
        var part = model.Parts[layer + 1];
        var accumulators = group.ToDictionary(n => n, n => new HessianAccumulator((int)part[n + ".weight"].size(1)));
        try
        {
            var observed = part.With(part.Tensors, (name, x) => { if (accumulators.TryGetValue(name, out var a)) a.Add(x); });
            for (int k = 0; k < windows.Count; k++)
            {
                using var scope = torch.NewDisposeScope();
                model.RunStage(layer + 1, observed, hidden[k], Batch(model, windows[k]), caches.Layer(windows[k], layer));
            }
            return accumulators.ToDictionary(a => a.Key, a => a.Value.Hessian().DetachFromDisposeScope());
        }
        finally
        {
            foreach (var a in accumulators.Values) a.Dispose();
        }
    }

    /// <summary>The Hugging Face tensors of a (possibly fused) map: row ranges of its weight with their checkpoint names.</summary>
    static IReadOnlyList<(string Name, Tensor Rows)> PartsOf(CausalLanguageModel model, PartWeights part, string name)
    {
        var weight = part[name + ".weight"];
        var parameter = model.Parameters.FirstOrDefault(p => ReferenceEquals(p.Tensor, weight))
            ?? throw new InvalidOperationException($"'{part.Prefix}{name}.weight' is not a parameter of the model as loaded (transformed at load?); it cannot be compressed.");
        return parameter.HfTensors().ToArray();
    }

    static IEnumerable<CompressedTensorReport> CompressLinear(CausalLanguageModel model, PartWeights part, string name, Tensor? hessian, CompressionOptions o)
    {
        var reports = new List<CompressedTensorReport>();
        // Fused maps (q|k|v, gate|up) are compressed per original tensor, as the recipes compress each module: one Hessian,
        // each tensor's own grid and sparsity mask.
        foreach (var (hfName, rows) in PartsOf(model, part, name))
        {
            using var scope = torch.NewDisposeScope();
            var original = rows.to(ScalarType.Float64, torch.CPU);
            CompressedWeight result = o.Method switch
            {
                CompressionMethod.Rtn => new CompressedWeight(RoundToNearest(rows, o), 0),
                CompressionMethod.Gptq => Gptq.Quantize(rows, hessian!, new GptqOptions { Bits = o.Bits, GroupSize = o.GroupSize, ActOrder = o.ActOrder, Damping = o.Damping }),
                _ => SparseGpt.Prune(rows, hessian!, new SparseGptOptions { Sparsity = o.Sparsity, Bits = o.Bits, GroupSize = o.GroupSize, Damping = o.Damping }),
            };
            rows.copy_(result.Weight);
            var after = rows.to(ScalarType.Float64, torch.CPU);
            double error = ((after - original).norm() / original.norm().clamp_min(1e-300)).item<double>();
            double zeros = after.eq(0).to(ScalarType.Float64).mean().item<double>();
            reports.Add(new CompressedTensorReport(hfName, rows.NumberOfElements, result.Loss, error, zeros));
        }
        return reports;
    }

    /// <summary>RTN: <see cref="GroupQuantizer"/> with groups along the input dimension (a group per row when the group size is 0).</summary>
    static Tensor RoundToNearest(Tensor weight, CompressionOptions o)
    {
        int columns = (int)weight.size(1);
        int group = o.GroupSize > 0 ? o.GroupSize : columns + columns % 2;
        using var q = GroupQuantizer.Quantize(weight.to(ScalarType.Float32), new GroupQuantizationOptions { Bits = o.Bits, GroupSize = group, Dimension = 1 });
        return GroupQuantizer.Dequantize(q).to(weight.dtype);
    }

    static string ShortName(string name) => name.Split('.')[^2];

    /// <summary>One dense cache per calibration batch size, each layer emptied before it runs again.</summary>
    sealed class CacheSet(CausalLanguageModel model, int length) : IDisposable
    {
        readonly Dictionary<long, Caching.KvCache> caches = new();

        public Caching.LayerKvCache Layer(Tensor ids, int layer)
        {
            long b = ids.size(0);
            if (!caches.TryGetValue(b, out var cache))
                caches[b] = cache = model.CreateCache((int)b, length, maxStepTokens: length);
            cache[layer].Clear();
            return cache[layer];
        }

        public void Dispose()
        {
            foreach (var c in caches.Values) c.Dispose();
        }
    }
}
