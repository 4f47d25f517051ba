using System.Text.Json;
using System.Text.Json.Nodes;

namespace Tern.Checkpoints;

/// <summary>
/// A Hugging Face <c>config.json</c>, read as written by transformers 4.x and 5.x, with typed accessors whose errors name
/// the file and the field. Field names are kept exactly as in the file.
/// </summary>
public sealed class HfConfig
{
    readonly JsonObject root;

    HfConfig(JsonObject root, string path)
    {
        this.root = root;
        Path = path;
    }

    /// <summary>The file this config was read from (for messages).</summary>
    public string Path { get; }

    /// <summary>The raw JSON object.</summary>
    public JsonObject Json => root;

    /// <summary>Architecture class names of transformers, for configs that lack <c>model_type</c>.</summary>
    static readonly Dictionary<string, string> ModelTypeOfArchitecture = new(StringComparer.Ordinal)
    {
        ["LlamaForCausalLM"] = "llama", ["MistralForCausalLM"] = "mistral", ["Qwen2ForCausalLM"] = "qwen2",
        ["OPTForCausalLM"] = "opt", ["GPTNeoXForCausalLM"] = "gpt_neox", ["GPT2LMHeadModel"] = "gpt2",
    };

    /// <summary><c>model_type</c>, lower-case; inferred from <c>architectures</c> when absent.</summary>
    public string ModelType
    {
        get
        {
            string? type = GetString("model_type");
            if (!string.IsNullOrEmpty(type)) return type.ToLowerInvariant();
            if (root["architectures"] is not JsonArray { Count: > 0 } archs)
                throw Error("model_type", "is missing (and there is no 'architectures' entry to infer it from)");
            if (archs[0] is not JsonValue v || !v.TryGetValue(out string? arch))
                throw Error("architectures", "must be a list of class names such as \"LlamaForCausalLM\"");
            return ModelTypeOfArchitecture.TryGetValue(arch, out string? known) ? known
                : throw Error("model_type", $"is missing and the architecture '{arch}' does not say which one; add \"model_type\"");
        }
    }

    /// <summary>Reads and parses <c>config.json</c> in a model folder.</summary>
    public static HfConfig Load(string modelDirectory)
    {
        if (!Directory.Exists(modelDirectory))
            throw new CheckpointException($"model folder '{modelDirectory}' does not exist.");
        string path = System.IO.Path.Combine(modelDirectory, "config.json");
        if (!File.Exists(path))
            throw new CheckpointException($"{path} is missing: a Hugging Face model folder needs config.json next to its weights.");
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses config text; <paramref name="path"/> is used in messages.</summary>
    public static HfConfig Parse(string json, string path = "config.json")
    {
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new CheckpointException($"{path} is not valid JSON: {e.Message}", e);
        }
        if (node is not JsonObject obj) throw new CheckpointException($"{path} must hold a JSON object.");
        return new HfConfig(obj, path);
    }

    /// <summary>True when the field is present and not null.</summary>
    public bool Has(string field) => root[field] is not null;

    /// <summary>A required integer field.</summary>
    public int RequireInt(string field) => GetInt(field) ?? throw Error(field, "is missing (required)");

    /// <summary>A required integer field, trying several names in order (architectures spell them differently).</summary>
    public int RequireInt(params string[] fields)
    {
        foreach (string f in fields)
            if (GetInt(f) is int v) return v;
        throw Error(fields[0], $"is missing (required; also looked for {string.Join(", ", fields.Skip(1).Select(f => $"'{f}'"))})");
    }

    /// <summary>An optional integer field.</summary>
    public int? GetInt(string field) => Get(field, (JsonValue v) =>
    {
        if (v.TryGetValue(out int i)) return i;
        if (v.TryGetValue(out double d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue) return (int)d;
        throw Error(field, $"must be an integer, found {v.ToJsonString()}");
    });

    /// <summary>An optional number field.</summary>
    public double? GetDouble(string field) => Get(field, (JsonValue v) =>
        v.TryGetValue(out double d) ? d : throw Error(field, $"must be a number, found {v.ToJsonString()}"));

    /// <summary>An optional boolean field.</summary>
    public bool? GetBool(string field) => Get(field, (JsonValue v) =>
        v.TryGetValue(out bool b) ? b : throw Error(field, $"must be true or false, found {v.ToJsonString()}"));

    /// <summary>An optional string field.</summary>
    public string? GetString(string field) => Get(field, (JsonValue v) =>
        v.TryGetValue(out string? s) ? s : throw Error(field, $"must be a string, found {v.ToJsonString()}"));

    /// <summary>An integer field that may also be a list of integers (e.g. <c>eos_token_id</c>).</summary>
    public IReadOnlyList<int> GetIntList(string field)
    {
        JsonNode? node = root[field];
        if (node is null) return Array.Empty<int>();
        if (node is JsonArray arr)
            return arr.Select((x, i) => x is JsonValue v && v.TryGetValue(out int n) ? n : throw Error($"{field}[{i}]", "must be an integer")).ToArray();
        return new[] { GetInt(field)!.Value };
    }

    /// <summary>A nested object (e.g. <c>rope_scaling</c>), or null.</summary>
    public JsonObject? GetObject(string field) => root[field] switch
    {
        null => null,
        JsonObject o => o,
        var other => throw Error(field, $"must be an object, found {other.ToJsonString()}"),
    };

    /// <summary>An error about a field of this file.</summary>
    public CheckpointException Error(string field, string problem) =>
        new($"{Path}: field '{field}' {problem}.");

    T? Get<T>(string field, Func<JsonValue, T> convert) where T : struct
    {
        JsonNode? node = root[field];
        if (node is null) return null;
        if (node is not JsonValue value) throw Error(field, $"must be a single value, found {node.ToJsonString()}");
        return convert(value);
    }

    string? Get(string field, Func<JsonValue, string?> convert)
    {
        JsonNode? node = root[field];
        if (node is null) return null;
        if (node is not JsonValue value) throw Error(field, $"must be a single value, found {node.ToJsonString()}");
        return convert(value);
    }
}
