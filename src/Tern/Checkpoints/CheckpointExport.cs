using System.Text.Json;
using System.Text.Json.Nodes;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Checkpoints;

/// <summary>What <see cref="CheckpointExport.Run"/> writes.</summary>
public sealed record ExportOptions
{
    /// <summary>Type of the floating-point tensors written; null keeps each tensor's stored type.</summary>
    public ModelDType? DType { get; init; }

    /// <summary>Largest weight file; a model that does not fit one is split into shards plus an index (as transformers'
    /// <c>save_pretrained(max_shard_size=…)</c>).</summary>
    public long MaxShardBytes { get; init; } = 5L << 30;

    /// <summary>Multiply factored (InRank, <see cref="Models.LowRankLayout"/>) linear maps back into ordinary dense weights and
    /// drop config.json's <c>low_rank</c> section, so any Hugging Face loader reads the model. No effect on a dense model.</summary>
    public bool Dense { get; init; }

    /// <summary>Told the fraction done (tensors read and converted, then the files written) as the export runs; null: silent.</summary>
    public IProgress<double>? Progress { get; init; }
}

/// <summary>
/// Rewrites a Hugging Face model folder: every tensor under its own name (cast to <see cref="ExportOptions.DType"/>), sharded
/// to <see cref="ExportOptions.MaxShardBytes"/>, with config.json's dtype updated and the other model files (generation
/// config, tokenizer, chat template) copied. Architecture-independent: tensors are copied by name, never re-fused.
/// </summary>
public static class CheckpointExport
{
    /// <summary>The files besides the weights that make a model folder.</summary>
    static readonly string[] CompanionFiles =
    {
        "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
        "special_tokens_map.json", "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    };

    /// <summary>Writes the converted model to <paramref name="destination"/> (created if needed; must differ from the source).</summary>
    /// <returns>The weight files written.</returns>
    /// <exception cref="CheckpointException">The source does not hold a readable model.</exception>
    public static IReadOnlyList<string> Run(string source, string destination, ExportOptions options)
    {
        string from = Path.GetFullPath(source), to = Path.GetFullPath(destination);
        if (string.Equals(from.TrimEnd('/'), to.TrimEnd('/'), StringComparison.Ordinal))
            throw new ArgumentException($"the output folder must differ from the model folder ({from}).");
        string configPath = Path.Combine(from, "config.json");
        if (!File.Exists(configPath)) throw new CheckpointException($"{from}: no config.json; is this a Hugging Face model folder?");
        var config = JsonNode.Parse(File.ReadAllText(configPath)) as JsonObject
            ?? throw new CheckpointException($"{configPath}: not a JSON object.");

        using var reader = CheckpointReader.Open(from);
        using var scope = torch.NewDisposeScope();
        var target = options.DType?.ToScalarType();
        var layout = options.Dense ? Models.LowRankLayout.FromConfig(HfConfig.Parse(config.ToJsonString(), configPath)) : null;
        Tensor Cast(Tensor stored) => target is { } t && stored.is_floating_point() && stored.dtype != t ? stored.to(t) : stored;
        var tensors = new List<(string, Tensor)>();
        var names = reader.Names.ToList();
        for (int i = 0; i < names.Count; i++)
        {
            string name = names[i];
            options.Progress?.Report(0.9 * i / names.Count); // reading and converting; writing the shards is the last tenth
            if (layout is not null && FactorOf(name, layout) is { } linear)
            {
                // W = (W0 +) B[:, :live]·A[:live, :], once per linear, where its first tensor comes.
                if (tensors.Any(t => t.Item1 == linear + ".weight")) continue;
                long live = layout.Live(linear);
                var a = reader.LoadAsStored(linear + ".weight_a").narrow(0, 0, live);
                var b = reader.LoadAsStored(linear + ".weight_b").narrow(1, 0, live);
                var w = b.to(ScalarType.Float64).matmul(a.to(ScalarType.Float64));
                if (layout.DenseTransposed) w = w.t(); // stored [in, out] (GPT-2's Conv1D)
                if (layout.Variant == Models.LowRankVariant.Original) w = w + reader.LoadAsStored(linear + ".weight").to(ScalarType.Float64);
                tensors.Add((linear + ".weight", Cast(w.to(a.dtype).contiguous())));
                continue;
            }
            tensors.Add((name, Cast(reader.LoadAsStored(name))));
        }
        Directory.CreateDirectory(to);
        options.Progress?.Report(0.9);
        var written = SafetensorsWriter.WriteSharded(to, tensors, options.MaxShardBytes);

        if (layout is not null) config.Remove(Models.LowRankLayout.ConfigKey);
        WriteCompanions(from, to, config, options.DType);
        options.Progress?.Report(1.0);
        return written;
    }

    /// <summary>Writes <paramref name="config"/> (its dtype set to <paramref name="dtype"/> when given) as
    /// <paramref name="to"/>/config.json and copies the other model files (generation config, tokenizer) from
    /// <paramref name="from"/>: everything of a model folder but the weights.</summary>
    internal static void WriteCompanions(string from, string to, JsonObject config, ModelDType? dtype)
    {
        if (dtype is { } type)
        {
            // transformers 5 reads "dtype"; 4.x wrote "torch_dtype". Keep whichever the config uses, "dtype" when neither.
            string name = type switch { ModelDType.BFloat16 => "bfloat16", ModelDType.Float16 => "float16", _ => "float32" };
            bool legacy = config.ContainsKey("torch_dtype");
            if (legacy) config["torch_dtype"] = name;
            if (!legacy || config.ContainsKey("dtype")) config["dtype"] = name;
        }
        AtomicFile.Write(Path.Combine(to, "config.json"), s =>
        {
            using (var w = new Utf8JsonWriter(s, new JsonWriterOptions { Indented = true })) config.WriteTo(w);
            s.WriteByte((byte)'\n');
        });
        foreach (string file in CompanionFiles)
            if (File.Exists(Path.Combine(from, file)))
                File.Copy(Path.Combine(from, file), Path.Combine(to, file), overwrite: true);
    }

    /// <summary>The factored linear a tensor belongs to (its <c>weight_a</c>, <c>weight_b</c>, or the original variant's
    /// <c>weight</c>), or null.</summary>
    static string? FactorOf(string name, Models.LowRankLayout layout)
    {
        foreach (string suffix in new[] { ".weight_a", ".weight_b", ".weight" })
            if (name.EndsWith(suffix, StringComparison.Ordinal) && layout.Contains(name[..^suffix.Length])) return name[..^suffix.Length];
        return null;
    }

    /// <summary>Parses a size such as <c>15MB</c>, <c>2GB</c>, <c>500KiB</c> or a byte count (decimal units are powers of
    /// 1000, binary ones of 1024, as in transformers' <c>max_shard_size</c>).</summary>
    public static long ParseSize(string text)
    {
        string t = text.Trim();
        int split = t.Length;
        while (split > 0 && char.IsLetter(t[split - 1])) split--;
        string unit = t[split..].ToUpperInvariant();
        long factor = unit switch
        {
            "" or "B" => 1, "KB" => 1000, "MB" => 1000_000, "GB" => 1000_000_000,
            "KIB" => 1L << 10, "MIB" => 1L << 20, "GIB" => 1L << 30,
            _ => throw new ArgumentException($"'{text}' has an unknown unit '{t[split..]}' (use B, KB, MB, GB, KiB, MiB or GiB)."),
        };
        if (!double.TryParse(t[..split], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double value) || !(value > 0))
            throw new ArgumentException($"'{text}' is not a positive size such as 15MB.");
        return (long)(value * factor);
    }
}
