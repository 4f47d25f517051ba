namespace Tern.Tokenization;

/// <summary>An added token (HF <c>AddedToken</c>): matched as a whole string in the raw text before BPE runs.</summary>
internal sealed record AddedToken(
    string Content,
    int Id,
    bool Special,
    bool LStrip = false,
    bool RStrip = false,
    bool SingleWord = false);

/// <summary>A piece of the input: either plain text for the model (<see cref="TokenId"/> = -1) or one added token.</summary>
internal readonly record struct Segment(int Start, int Length, int TokenId)
{
    public bool IsAddedToken => TokenId >= 0;
}

/// <summary>
/// Splits text on added tokens the way HF <c>tokenizers</c>' <c>AddedVocabulary</c> does: leftmost match, longest
/// token first at that position, with <c>lstrip</c>/<c>rstrip</c> absorbing neighbouring whitespace and
/// <c>single_word</c> requiring word boundaries.
/// </summary>
internal sealed class AddedTokenSplitter
{
    private readonly Dictionary<char, AddedToken[]> _byFirstChar;

    public AddedTokenSplitter(IEnumerable<AddedToken> tokens)
    {
        Tokens = tokens.Where(t => t.Content.Length > 0)
            .GroupBy(t => t.Content, StringComparer.Ordinal).Select(g => g.First()).ToList();
        _byFirstChar = Tokens.GroupBy(t => t.Content[0])
            .ToDictionary(g => g.Key, g => g.OrderByDescending(t => t.Content.Length).ToArray());
    }

    public IReadOnlyList<AddedToken> Tokens { get; }

    public List<Segment> Split(string text)
    {
        var segments = new List<Segment>();
        int textStart = 0, i = 0;
        while (i < text.Length)
        {
            AddedToken? match = null;
            if (_byFirstChar.TryGetValue(text[i], out var candidates))
            {
                foreach (var token in candidates)
                {
                    if (text.AsSpan(i).StartsWith(token.Content, StringComparison.Ordinal)
                        && (!token.SingleWord || IsWordBoundary(text, i, i + token.Content.Length)))
                    {
                        match = token;
                        break;
                    }
                }
            }
            if (match is null)
            {
                i++;
                continue;
            }

            int start = i, end = i + match.Content.Length;
            if (match.LStrip) while (start > textStart && char.IsWhiteSpace(text[start - 1])) start--;
            if (match.RStrip) while (end < text.Length && char.IsWhiteSpace(text[end])) end++;
            if (start > textStart) segments.Add(new Segment(textStart, start - textStart, -1));
            segments.Add(new Segment(start, end - start, match.Id));
            textStart = i = end;
        }
        if (textStart < text.Length) segments.Add(new Segment(textStart, text.Length - textStart, -1));
        return segments;
    }

    private static bool IsWordBoundary(string text, int start, int end)
        => (start == 0 || !char.IsLetterOrDigit(text[start - 1])) && (end >= text.Length || !char.IsLetterOrDigit(text[end]));
}
