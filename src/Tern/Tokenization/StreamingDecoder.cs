namespace Tern.Tokenization;

/// <summary>
/// Incremental detokenizer for streaming generation. Byte-level and byte-fallback tokens can end in the middle of a
/// multi-byte UTF-8 character (an emoji is often 2–4 tokens), so text is only returned once it no longer ends in an
/// incomplete character. The pieces returned by <see cref="Push(int)"/> and <see cref="Flush"/>, concatenated, equal
/// <see cref="TernTokenizer.Decode"/> of all the ids.
/// </summary>
/// <remarks>
/// Each step decodes only a short window: the tokens since the last emitted text plus the tokens of that text, and
/// returns what the window adds beyond its already-emitted prefix (the approach of text-generation-inference's
/// <c>decode_token</c>). Keeping the previous tokens in the window preserves word-initial spaces that SentencePiece
/// decoders strip from the first token. Not thread-safe; use one per generation.
/// </remarks>
public sealed class StreamingDecoder
{
    // A character is at most 4 UTF-8 bytes, each token holds at least one: after this many tokens without a complete
    // character the bytes are invalid, and the replacement characters are emitted as Decode would.
    private const int MaxPendingTokens = 8;

    private readonly TernTokenizer _tokenizer;
    private readonly bool _skipSpecialTokens;
    private readonly List<int> _ids = [];
    private int _prefixOffset, _readOffset;

    internal StreamingDecoder(TernTokenizer tokenizer, bool skipSpecialTokens)
    {
        _tokenizer = tokenizer;
        _skipSpecialTokens = skipSpecialTokens;
    }

    /// <summary>All ids pushed so far.</summary>
    public IReadOnlyList<int> Ids => _ids;

    /// <summary>Adds one id; returns the newly completed text, or "" while a character is still incomplete.</summary>
    public string Push(int id)
    {
        _ids.Add(id);
        string prefixText = DecodeRange(_prefixOffset, _readOffset);
        string newText = DecodeRange(_prefixOffset, _ids.Count);
        bool incomplete = newText.Length > 0 && newText[^1] == '\uFFFD' && _ids.Count - _readOffset < MaxPendingTokens;
        if (newText.Length <= prefixText.Length || incomplete) return "";
        string delta = newText[prefixText.Length..];
        _prefixOffset = _readOffset;
        _readOffset = _ids.Count;
        return delta;
    }

    /// <summary>Adds several ids and returns the text they complete.</summary>
    public string Push(IEnumerable<int> ids) => string.Concat(ids.Select(Push));

    /// <summary>Returns any text still held back (an incomplete character at the end becomes U+FFFD, as in Decode).</summary>
    public string Flush()
    {
        if (_readOffset == _ids.Count) return "";
        string prefixText = DecodeRange(_prefixOffset, _readOffset);
        string newText = DecodeRange(_prefixOffset, _ids.Count);
        _prefixOffset = _readOffset;
        _readOffset = _ids.Count;
        return newText.Length <= prefixText.Length ? "" : newText[prefixText.Length..];
    }

    /// <summary>Forgets all ids, to start a new sequence.</summary>
    public void Reset()
    {
        _ids.Clear();
        _prefixOffset = _readOffset = 0;
    }

    private string DecodeRange(int start, int end)
        => end <= start ? "" : _tokenizer.Decode(_ids.GetRange(start, end - start), _skipSpecialTokens);
}
