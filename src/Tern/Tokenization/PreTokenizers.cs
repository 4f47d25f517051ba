using System.Text.Json;
using System.Text.RegularExpressions;

namespace Tern.Tokenization;

/// <summary>A pre-tokenized piece; <see cref="AtStart"/> is true when it begins at offset 0 of the original text.</summary>
internal readonly record struct Piece(string Text, bool AtStart);

/// <summary>Splits a normalized segment into the pieces BPE runs on (HF <c>pre_tokenizers</c>).</summary>
internal abstract class PreTokenizerStep
{
    public abstract void Apply(Piece piece, List<Piece> output);

    /// <summary>True when this step (or one nested in it) is HF's <c>ByteLevel</c>, i.e. the model sees byte-level text.</summary>
    public virtual bool IsByteLevel => false;

    public static PreTokenizerStep? FromJson(JsonElement node, string file)
    {
        if (node.ValueKind == JsonValueKind.Null || node.ValueKind == JsonValueKind.Undefined) return null;
        string type = node.GetStringOrNull("type") ?? "";
        switch (type)
        {
            case "Sequence":
                return new SequencePreTokenizer(node.GetProperty("pretokenizers").EnumerateArray()
                    .Select(n => FromJson(n, file)).OfType<PreTokenizerStep>().ToArray());
            case "ByteLevel":
                return new ByteLevelPreTokenizer(node.GetBoolOr("add_prefix_space", false), node.GetBoolOr("use_regex", true));
            case "Split":
            {
                var pattern = JsonPattern.Parse(node.GetProperty("pattern"), file);
                string behavior = node.GetStringOrNull("behavior") ?? "Isolated";
                return new SplitPreTokenizer(pattern.Regex, ParseBehavior(behavior, file), node.GetBoolOr("invert", false));
            }
            case "Metaspace":
            {
                string replacement = node.GetStringOrNull("replacement") ?? "▁";
                string scheme = node.GetStringOrNull("prepend_scheme")
                    ?? (node.GetBoolOr("add_prefix_space", true) ? "always" : "never");
                return new MetaspacePreTokenizer(replacement, scheme.ToLowerInvariant(), node.GetBoolOr("split", true));
            }
            case "Digits":
                return new SplitPreTokenizer(new Regex(node.GetBoolOr("individual_digits", false) ? @"\p{Nd}" : @"\p{Nd}+", RegexOptions.CultureInvariant),
                    SplitBehavior.Isolated, false);
            case "WhitespaceSplit":
                return new SplitPreTokenizer(new Regex(@"\s+", RegexOptions.CultureInvariant), SplitBehavior.Removed, false);
            case "Whitespace":
                return new SplitPreTokenizer(new Regex(@"\w+|[^\w\s]+", RegexOptions.CultureInvariant), SplitBehavior.Removed, true);
            default:
                throw new TokenizerException($"{file}: pre_tokenizer type '{type}' is not supported by Tern " +
                    "(supported: ByteLevel, Split, Sequence, Metaspace, Digits, Whitespace, WhitespaceSplit).");
        }
    }

    private static SplitBehavior ParseBehavior(string behavior, string file) => behavior switch
    {
        "Isolated" => SplitBehavior.Isolated,
        "Removed" => SplitBehavior.Removed,
        "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
        "MergedWithNext" => SplitBehavior.MergedWithNext,
        "Contiguous" => SplitBehavior.Contiguous,
        _ => throw new TokenizerException($"{file}: Split behavior '{behavior}' is not supported."),
    };
}

internal enum SplitBehavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous }

internal sealed class SequencePreTokenizer(PreTokenizerStep[] steps) : PreTokenizerStep
{
    public override bool IsByteLevel => steps.Any(s => s.IsByteLevel);

    public override void Apply(Piece piece, List<Piece> output)
    {
        var current = new List<Piece> { piece };
        var next = new List<Piece>();
        foreach (var step in steps)
        {
            next.Clear();
            foreach (var p in current) step.Apply(p, next);
            (current, next) = (next, current);
        }
        output.AddRange(current);
    }
}

/// <summary>HF <c>ByteLevel</c> pre-tokenizer: optional prefix space, optional GPT-2 regex split. The byte mapping itself is done by the model.</summary>
internal sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : PreTokenizerStep
{
    private static readonly Regex Gpt2 = new(ByteLevel.Gpt2Pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);

    public override bool IsByteLevel => true;

    public override void Apply(Piece piece, List<Piece> output)
    {
        string text = piece.Text;
        if (addPrefixSpace && !text.StartsWith(' ')) text = " " + text;
        if (useRegex) SplitPreTokenizer.SplitInto(new Piece(text, piece.AtStart), Gpt2, SplitBehavior.Isolated, false, output);
        else output.Add(new Piece(text, piece.AtStart));
    }
}

/// <summary>HF <c>Split</c>: regex matches and the gaps between them become pieces according to the behaviour.</summary>
internal sealed class SplitPreTokenizer(Regex regex, SplitBehavior behavior, bool invert) : PreTokenizerStep
{
    public override void Apply(Piece piece, List<Piece> output) => SplitInto(piece, regex, behavior, invert, output);

    public static void SplitInto(Piece piece, Regex regex, SplitBehavior behavior, bool invert, List<Piece> output)
    {
        string text = piece.Text;
        // (start, length, isDelimiter) covering the whole text; "delimiter" is a match unless inverted.
        var spans = new List<(int Start, int Length, bool Delim)>();
        int last = 0;
        for (var m = regex.Match(text); m.Success; m = m.NextMatch())
        {
            if (m.Length == 0) continue;
            if (m.Index > last) spans.Add((last, m.Index - last, invert));
            spans.Add((m.Index, m.Length, !invert));
            last = m.Index + m.Length;
        }
        if (last < text.Length) spans.Add((last, text.Length - last, invert));

        void Emit(int start, int end)
        {
            if (end > start) output.Add(new Piece(text.Substring(start, end - start), piece.AtStart && start == 0));
        }

        switch (behavior)
        {
            case SplitBehavior.Isolated:
                foreach (var s in spans) Emit(s.Start, s.Start + s.Length);
                break;
            case SplitBehavior.Removed:
                foreach (var s in spans) if (!s.Delim) Emit(s.Start, s.Start + s.Length);
                break;
            case SplitBehavior.MergedWithPrevious:
            {
                int start = 0;
                foreach (var s in spans)
                {
                    if (s.Delim) { Emit(start, s.Start + s.Length); start = s.Start + s.Length; }
                }
                Emit(start, text.Length);
                break;
            }
            case SplitBehavior.MergedWithNext:
            {
                int start = 0;
                foreach (var s in spans)
                {
                    if (s.Delim) { Emit(start, s.Start); start = s.Start; }
                }
                Emit(start, text.Length);
                break;
            }
            case SplitBehavior.Contiguous:
            {
                int i = 0;
                while (i < spans.Count)
                {
                    int j = i;
                    if (spans[i].Delim) while (j + 1 < spans.Count && spans[j + 1].Delim) j++;
                    Emit(spans[i].Start, spans[j].Start + spans[j].Length);
                    i = j + 1;
                }
                break;
            }
        }
    }
}

/// <summary>
/// HF <c>Metaspace</c>: spaces become "▁"; the prefix "▁" is added (scheme "always", or "first" only for the piece at
/// offset 0) unless the text already starts with it; with <c>split</c> the text is cut before every "▁".
/// </summary>
internal sealed class MetaspacePreTokenizer(string replacement, string prependScheme, bool split) : PreTokenizerStep
{
    public string Replacement => replacement;
    public string PrependScheme => prependScheme;

    public override void Apply(Piece piece, List<Piece> output)
    {
        string text = piece.Text.Replace(" ", replacement, StringComparison.Ordinal);
        bool prepend = prependScheme == "always" || (prependScheme == "first" && piece.AtStart);
        if (prepend && !text.StartsWith(replacement, StringComparison.Ordinal)) text = replacement + text;
        if (!split)
        {
            output.Add(new Piece(text, piece.AtStart));
            return;
        }
        int start = 0;
        for (int i = text.Length > 1 ? text.IndexOf(replacement, 1, StringComparison.Ordinal) : -1; i > 0; i = text.IndexOf(replacement, i + 1, StringComparison.Ordinal))
        {
            output.Add(new Piece(text[start..i], piece.AtStart && start == 0));
            start = i;
        }
        if (start < text.Length) output.Add(new Piece(text[start..], piece.AtStart && start == 0));
    }
}
