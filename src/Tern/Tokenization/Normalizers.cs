using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Tern.Tokenization;

/// <summary>A text transform applied to each non-added-token segment before pre-tokenization (HF <c>normalizers</c>).</summary>
internal abstract class TextNormalizer
{
    public abstract string Normalize(string text);

    /// <summary>Builds the normalizer a <c>tokenizer.json</c> "normalizer" node describes; null for JSON null.</summary>
    public static TextNormalizer? FromJson(JsonElement node, string file)
    {
        if (node.ValueKind == JsonValueKind.Null || node.ValueKind == JsonValueKind.Undefined) return null;
        string type = node.GetStringOrNull("type") ?? "";
        switch (type)
        {
            case "Sequence":
                return new SequenceNormalizer(node.GetProperty("normalizers").EnumerateArray()
                    .Select(n => FromJson(n, file)).OfType<TextNormalizer>().ToArray());
            case "Prepend":
                return new PrependNormalizer(node.GetProperty("prepend").GetString() ?? "");
            case "Replace":
                return new ReplaceNormalizer(JsonPattern.Parse(node.GetProperty("pattern"), file), node.GetProperty("content").GetString() ?? "");
            case "NFC": return new UnicodeNormalizer(NormalizationForm.FormC);
            case "NFD": return new UnicodeNormalizer(NormalizationForm.FormD);
            case "NFKC": return new UnicodeNormalizer(NormalizationForm.FormKC);
            case "NFKD": return new UnicodeNormalizer(NormalizationForm.FormKD);
            case "Lowercase": return new LowercaseNormalizer();
            case "Strip":
                return new StripNormalizer(node.GetBoolOr("strip_left", true), node.GetBoolOr("strip_right", true));
            case "Precompiled":
                // An empty charsmap is a no-op; a real one (SentencePiece nmt_nfkc tables) is not implemented.
                string? map = node.GetStringOrNull("precompiled_charsmap");
                if (string.IsNullOrEmpty(map)) return null;
                throw new TokenizerException($"{file}: the 'Precompiled' normalizer (a SentencePiece normalisation table) is not supported by Tern.");
            default:
                throw new TokenizerException($"{file}: normalizer type '{type}' is not supported by Tern " +
                    "(supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip).");
        }
    }
}

internal sealed class SequenceNormalizer(TextNormalizer[] steps) : TextNormalizer
{
    public override string Normalize(string text)
    {
        foreach (var step in steps) text = step.Normalize(text);
        return text;
    }
}

/// <summary>HF <c>Prepend</c>: prefixes non-empty text (legacy Llama-2 <c>tokenizer.json</c> prepends "▁").</summary>
internal sealed class PrependNormalizer(string prefix) : TextNormalizer
{
    public override string Normalize(string text) => text.Length == 0 ? text : prefix + text;
}

internal sealed class ReplaceNormalizer(JsonPattern pattern, string content) : TextNormalizer
{
    public override string Normalize(string text) => pattern.Replace(text, content);
}

internal sealed class UnicodeNormalizer(NormalizationForm form) : TextNormalizer
{
    public override string Normalize(string text) => text.Normalize(form);
}

internal sealed class LowercaseNormalizer : TextNormalizer
{
    public override string Normalize(string text) => text.ToLowerInvariant();
}

internal sealed class StripNormalizer(bool left, bool right) : TextNormalizer
{
    public override string Normalize(string text) => left && right ? text.Trim() : left ? text.TrimStart() : right ? text.TrimEnd() : text;
}

/// <summary>A <c>{"String": ...}</c> or <c>{"Regex": ...}</c> pattern from <c>tokenizer.json</c>.</summary>
internal sealed class JsonPattern
{
    private readonly string? _literal;
    public Regex Regex { get; }

    private JsonPattern(string? literal, Regex regex)
    {
        _literal = literal;
        Regex = regex;
    }

    public static JsonPattern Parse(JsonElement node, string file)
    {
        if (node.ValueKind == JsonValueKind.String) return Literal(node.GetString()!);
        if (node.TryGetProperty("String", out var s)) return Literal(s.GetString() ?? "");
        if (node.TryGetProperty("Regex", out var r)) return new JsonPattern(null, RegexCompat.Create(r.GetString() ?? "", file));
        throw new TokenizerException($"{file}: pattern {node.GetRawText()} is neither {{\"String\": ...}} nor {{\"Regex\": ...}}.");
    }

    public static JsonPattern Literal(string literal)
        => new(literal, new Regex(Regex.Escape(literal), RegexOptions.CultureInvariant));

    public string Replace(string text, string content)
        => _literal is not null ? (_literal.Length == 0 ? text : text.Replace(_literal, content, StringComparison.Ordinal)) : Regex.Replace(text, content);
}

/// <summary>
/// Turns an Oniguruma pattern from <c>tokenizer.json</c> into a .NET <see cref="Regex"/>. The patterns real models use
/// (GPT-2, Llama-3, Qwen2, DeepSeek) are valid .NET syntax as is; possessive quantifiers (<c>a++</c>, <c>\p{L}?+</c>),
/// which .NET lacks, are rewritten as atomic groups.
/// </summary>
/// <remarks>
/// One known difference remains: .NET matches UTF-16 code units, so a letter or digit outside the Basic Multilingual
/// Plane (e.g. CJK Extension B, mathematical alphanumerics) is not <c>\p{L}</c>/<c>\p{N}</c> for .NET while it is for
/// Oniguruma; such text can pre-tokenize differently from HF. Emoji are unaffected (they are symbols either way).
/// </remarks>
internal static class RegexCompat
{
    private static readonly Regex Possessive = new(
        @"(\\p\{[^}]+\}|\\P\{[^}]+\}|\\.|\[(?:\\.|[^\]\\])*\]|[^\\\[\]()|])([?*+]|\{\d+(?:,\d*)?\})\+",
        RegexOptions.CultureInvariant);

    public static Regex Create(string pattern, string file)
    {
        string translated = Possessive.Replace(pattern, "(?>$1$2)");
        try
        {
            return new Regex(translated, RegexOptions.Compiled | RegexOptions.CultureInvariant);
        }
        catch (ArgumentException e)
        {
            throw new TokenizerException($"{file}: the pre-tokenizer regex '{pattern}' cannot be compiled by .NET: {e.Message}", e);
        }
    }
}

internal static class JsonExtensions
{
    public static string? GetStringOrNull(this JsonElement node, string name)
        => node.ValueKind == JsonValueKind.Object && node.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    public static bool GetBoolOr(this JsonElement node, string name, bool fallback)
        => node.ValueKind == JsonValueKind.Object && node.TryGetProperty(name, out var v) && (v.ValueKind == JsonValueKind.True || v.ValueKind == JsonValueKind.False) ? v.GetBoolean() : fallback;

    public static bool? GetBoolOrNull(this JsonElement node, string name)
        => node.ValueKind == JsonValueKind.Object && node.TryGetProperty(name, out var v) && (v.ValueKind == JsonValueKind.True || v.ValueKind == JsonValueKind.False) ? v.GetBoolean() : null;

    public static int? GetIntOrNull(this JsonElement node, string name)
        => node.ValueKind == JsonValueKind.Object && node.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : null;

    public static JsonElement GetOrUndefined(this JsonElement node, string name)
        => node.ValueKind == JsonValueKind.Object && node.TryGetProperty(name, out var v) ? v : default;
}
