using System.Text;
using System.Text.Json;

namespace Tern.Tokenization;

/// <summary>
/// One step of HF's decoder chain, which maps the list of token strings to the final text pieces
/// (<c>ByteLevel</c>, <c>Replace</c>, <c>ByteFallback</c>, <c>Fuse</c>, <c>Strip</c>, <c>Metaspace</c>).
/// </summary>
internal abstract class DecoderStep
{
    public abstract List<string> Decode(List<string> tokens);

    public static DecoderStep FromJson(JsonElement node, string file)
    {
        if (node.ValueKind == JsonValueKind.Null || node.ValueKind == JsonValueKind.Undefined) return new JoinWithSpaceDecoder();
        string type = node.GetStringOrNull("type") ?? "";
        switch (type)
        {
            case "Sequence":
                return new SequenceDecoder(node.GetProperty("decoders").EnumerateArray().Select(n => FromJson(n, file)).ToArray());
            case "ByteLevel": return new ByteLevelDecoder();
            case "ByteFallback": return new ByteFallbackDecoder();
            case "Fuse": return new FuseDecoder();
            case "Replace":
            {
                var pattern = JsonPattern.Parse(node.GetProperty("pattern"), file);
                string content = node.GetProperty("content").GetString() ?? "";
                return new ReplaceDecoder(pattern, content);
            }
            case "Strip":
            {
                string content = node.GetStringOrNull("content") ?? " ";
                return new StripDecoder(content.Length > 0 ? content[0] : ' ', node.GetIntOrNull("start") ?? 0, node.GetIntOrNull("stop") ?? 0);
            }
            case "Metaspace":
            {
                string replacement = node.GetStringOrNull("replacement") ?? "▁";
                string scheme = node.GetStringOrNull("prepend_scheme") ?? (node.GetBoolOr("add_prefix_space", true) ? "always" : "never");
                return new MetaspaceDecoder(replacement, scheme.ToLowerInvariant() != "never");
            }
            default:
                throw new TokenizerException($"{file}: decoder type '{type}' is not supported by Tern " +
                    "(supported: ByteLevel, Metaspace, Sequence, Replace, ByteFallback, Fuse, Strip).");
        }
    }
}

/// <summary>No decoder in <c>tokenizer.json</c>: HF joins the tokens with spaces.</summary>
internal sealed class JoinWithSpaceDecoder : DecoderStep
{
    public override List<string> Decode(List<string> tokens) => [string.Join(' ', tokens)];
}

internal sealed class SequenceDecoder(DecoderStep[] steps) : DecoderStep
{
    public override List<string> Decode(List<string> tokens)
    {
        foreach (var step in steps) tokens = step.Decode(tokens);
        return tokens;
    }
}

/// <summary>Byte-level tokens back to bytes, then lossy UTF-8 (invalid sequences become U+FFFD, as Rust's <c>from_utf8_lossy</c>).</summary>
internal sealed class ByteLevelDecoder : DecoderStep
{
    public override List<string> Decode(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var t in tokens) ByteLevel.AppendBytes(t, bytes);
        return [Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes))];
    }
}

/// <summary>Runs of <c>&lt;0xXX&gt;</c> tokens become the UTF-8 text they spell, or one U+FFFD per byte when invalid.</summary>
internal sealed class ByteFallbackDecoder : DecoderStep
{
    private static readonly UTF8Encoding Strict = new(false, true);

    public override List<string> Decode(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var pending = new List<byte>();
        void Flush()
        {
            if (pending.Count == 0) return;
            try
            {
                result.Add(Strict.GetString(pending.ToArray()));
            }
            catch (DecoderFallbackException)
            {
                for (int i = 0; i < pending.Count; i++) result.Add("\uFFFD");
            }
            pending.Clear();
        }
        foreach (var t in tokens)
        {
            if (TryParseByteToken(t, out byte b)) pending.Add(b);
            else
            {
                Flush();
                result.Add(t);
            }
        }
        Flush();
        return result;
    }

    public static bool TryParseByteToken(string token, out byte value)
    {
        value = 0;
        return token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>'
            && byte.TryParse(token.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out value);
    }
}

internal sealed class FuseDecoder : DecoderStep
{
    public override List<string> Decode(List<string> tokens) => [string.Concat(tokens)];
}

internal sealed class ReplaceDecoder(JsonPattern pattern, string content) : DecoderStep
{
    public override List<string> Decode(List<string> tokens) => tokens.Select(t => pattern.Replace(t, content)).ToList();
}

/// <summary>Removes up to <c>start</c> leading and <c>stop</c> trailing <c>content</c> characters from each token.</summary>
internal sealed class StripDecoder(char content, int start, int stop) : DecoderStep
{
    public override List<string> Decode(List<string> tokens) => tokens.Select(t =>
    {
        int s = 0, e = t.Length;
        while (s < start && s < e && t[s] == content) s++;
        int removed = 0;
        while (removed < stop && e > s && t[e - 1] == content) { e--; removed++; }
        return t[s..e];
    }).ToList();
}

/// <summary>HF <c>Metaspace</c> decoder: "▁" → space, and the first token loses its leading space when a prefix was added.</summary>
internal sealed class MetaspaceDecoder(string replacement, bool stripFirst) : DecoderStep
{
    public override List<string> Decode(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        for (int i = 0; i < tokens.Count; i++)
        {
            string t = tokens[i].Replace(replacement, " ", StringComparison.Ordinal);
            if (i == 0 && stripFirst && t.StartsWith(' ')) t = t[1..];
            result.Add(t);
        }
        return result;
    }
}
