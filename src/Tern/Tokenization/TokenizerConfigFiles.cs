using System.Text.Json;

namespace Tern.Tokenization;

/// <summary>
/// What Tern reads from the side files of a Hugging Face model folder: <c>tokenizer_config.json</c>,
/// <c>special_tokens_map.json</c>, <c>added_tokens.json</c>, <c>generation_config.json</c> and the chat template
/// (<c>tokenizer_config.json</c>'s <c>chat_template</c>, or <c>chat_template.jinja</c> / <c>chat_template.json</c>).
/// </summary>
internal sealed class TokenizerConfigFiles
{
    public string? TokenizerClass { get; private set; }
    public SpecialToken Bos { get; private set; }
    public SpecialToken Eos { get; private set; }
    public SpecialToken Pad { get; private set; }
    public SpecialToken Unk { get; private set; }
    public List<string> AdditionalSpecialTokens { get; } = [];
    public bool? AddBosToken { get; private set; }
    public bool? AddEosToken { get; private set; }
    public bool? AddPrefixSpace { get; private set; }
    public bool? Legacy { get; private set; }
    public bool CleanUpTokenizationSpaces { get; private set; }
    public string? ChatTemplate { get; private set; }
    public List<AddedToken> AddedTokensDecoder { get; } = [];
    public Dictionary<string, int> AddedTokensJson { get; } = new(StringComparer.Ordinal);
    public int? GenerationBosId { get; private set; }
    public List<int>? GenerationEosIds { get; private set; }
    public int? GenerationPadId { get; private set; }

    /// <summary>
    /// A special token as configured: <see cref="Mentioned"/> is false when no file names it (so a format default
    /// applies); <see cref="Content"/> is null when a file sets it to null explicitly (e.g. Qwen2's <c>bos_token</c>).
    /// </summary>
    public readonly record struct SpecialToken(bool Mentioned, string? Content)
    {
        public string? Or(string? fallback) => Mentioned ? Content : fallback;
    }

    public static TokenizerConfigFiles Load(string dir)
    {
        var cfg = new TokenizerConfigFiles();
        // special_tokens_map.json first, so tokenizer_config.json (what transformers reads last) wins.
        if (TryReadJson(dir, "special_tokens_map.json") is { } map) cfg.ReadSpecialTokens(map);
        if (TryReadJson(dir, "tokenizer_config.json") is { } tc)
        {
            cfg.ReadSpecialTokens(tc);
            cfg.TokenizerClass = tc.GetStringOrNull("tokenizer_class");
            cfg.AddBosToken = tc.GetBoolOrNull("add_bos_token");
            cfg.AddEosToken = tc.GetBoolOrNull("add_eos_token");
            cfg.AddPrefixSpace = tc.GetBoolOrNull("add_prefix_space");
            cfg.Legacy = tc.GetBoolOrNull("legacy");
            cfg.CleanUpTokenizationSpaces = tc.GetBoolOr("clean_up_tokenization_spaces", false);
            cfg.ChatTemplate = ReadChatTemplate(tc.GetOrUndefined("chat_template"));
            if (tc.GetOrUndefined("added_tokens_decoder") is { ValueKind: JsonValueKind.Object } decoder)
            {
                foreach (var entry in decoder.EnumerateObject())
                {
                    if (!int.TryParse(entry.Name, out int id)) continue;
                    var t = ParseAddedToken(entry.Value, id);
                    if (t is not null) cfg.AddedTokensDecoder.Add(t);
                }
            }
        }
        if (TryReadJson(dir, "added_tokens.json") is { ValueKind: JsonValueKind.Object } added)
        {
            foreach (var p in added.EnumerateObject())
                if (p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out int id)) cfg.AddedTokensJson[p.Name] = id;
        }
        if (cfg.ChatTemplate is null)
        {
            string jinja = Path.Combine(dir, "chat_template.jinja");
            if (File.Exists(jinja)) cfg.ChatTemplate = File.ReadAllText(jinja);
            else if (TryReadJson(dir, "chat_template.json") is { } ct) cfg.ChatTemplate = ReadChatTemplate(ct.GetOrUndefined("chat_template"));
        }
        if (TryReadJson(dir, "generation_config.json") is { } gen)
        {
            cfg.GenerationBosId = gen.GetIntOrNull("bos_token_id");
            cfg.GenerationPadId = gen.GetIntOrNull("pad_token_id");
            var eos = gen.GetOrUndefined("eos_token_id");
            if (eos.ValueKind == JsonValueKind.Number && eos.TryGetInt32(out int single)) cfg.GenerationEosIds = [single];
            else if (eos.ValueKind == JsonValueKind.Array)
                cfg.GenerationEosIds = eos.EnumerateArray().Where(e => e.ValueKind == JsonValueKind.Number).Select(e => e.GetInt32()).ToList();
        }
        return cfg;
    }

    private void ReadSpecialTokens(JsonElement node)
    {
        if (node.TryGetProperty("bos_token", out var bos)) Bos = new SpecialToken(true, TokenContent(bos));
        if (node.TryGetProperty("eos_token", out var eos)) Eos = new SpecialToken(true, TokenContent(eos));
        if (node.TryGetProperty("pad_token", out var pad)) Pad = new SpecialToken(true, TokenContent(pad));
        if (node.TryGetProperty("unk_token", out var unk)) Unk = new SpecialToken(true, TokenContent(unk));
        foreach (string key in new[] { "additional_special_tokens", "extra_special_tokens" })
        {
            if (node.TryGetProperty(key, out var extra) && extra.ValueKind == JsonValueKind.Array)
                foreach (var e in extra.EnumerateArray())
                    if (TokenContent(e) is { } s && !AdditionalSpecialTokens.Contains(s)) AdditionalSpecialTokens.Add(s);
        }
    }

    /// <summary>A token given as a string or as a serialized <c>AddedToken</c> object (<c>{"content": ...}</c>).</summary>
    internal static string? TokenContent(JsonElement node) => node.ValueKind switch
    {
        JsonValueKind.String => node.GetString(),
        JsonValueKind.Object => node.GetStringOrNull("content"),
        _ => null,
    };

    internal static AddedToken? ParseAddedToken(JsonElement node, int id)
    {
        string? content = node.GetStringOrNull("content");
        if (content is null) return null;
        return new AddedToken(content, id, node.GetBoolOr("special", false), node.GetBoolOr("lstrip", false),
            node.GetBoolOr("rstrip", false), node.GetBoolOr("single_word", false));
    }

    private static string? ReadChatTemplate(JsonElement node)
    {
        if (node.ValueKind == JsonValueKind.String) return node.GetString();
        if (node.ValueKind == JsonValueKind.Array)
        {
            // A list of named templates (e.g. "default", "tool_use"): the default one is the chat template.
            string? first = null;
            foreach (var e in node.EnumerateArray())
            {
                string? name = e.GetStringOrNull("name"), template = e.GetStringOrNull("template");
                if (name == "default") return template;
                first ??= template;
            }
            return first;
        }
        return null;
    }

    internal static JsonElement? TryReadJson(string dir, string fileName)
    {
        string path = Path.Combine(dir, fileName);
        if (!File.Exists(path)) return null;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path), new JsonDocumentOptions { AllowTrailingCommas = true });
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new TokenizerException($"{path} is not valid JSON: {e.Message}", e);
        }
    }
}
