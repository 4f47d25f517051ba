using System.Collections.Concurrent;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace Tern.Tokenization;

/// <summary>The BPE model: turns one pre-tokenized piece into ids.</summary>
internal interface IBpeModel
{
    void Encode(string piece, List<int> ids);
}

/// <summary>
/// Byte-level BPE through Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/> (<c>ByteLevel = true</c>), which gives HF's
/// ids for GPT-2, Pythia and Llama-3 style vocabularies. Tern does the splitting on added tokens and the
/// pre-tokenization itself (so every HF pre-tokenizer shape works), and hands the tokenizer one piece at a time.
/// </summary>
/// <remarks>
/// ML.Tokenizers has no <c>ignore_merges</c> (set by Llama-3's <c>tokenizer.json</c>): with it, HF emits a piece
/// whose byte-level form is itself in the vocabulary as that single id without running the merges. That check is done
/// here before calling BPE.
/// </remarks>
internal sealed class MlByteLevelBpeModel : IBpeModel
{
    private readonly BpeTokenizer _bpe;
    private readonly Dictionary<string, int> _vocab;
    private readonly bool _ignoreMerges;

    public MlByteLevelBpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string Left, string Right)> merges, string? unkToken,
        string? continuingSubwordPrefix, string? endOfWordSuffix, bool fuseUnk, bool ignoreMerges)
    {
        _vocab = vocab;
        _ignoreMerges = ignoreMerges;
        var options = new BpeOptions(vocab)
        {
            Merges = merges.Select(m => m.Left + " " + m.Right),
            ByteLevel = true,
            PreTokenizer = null,
            Normalizer = null,
            UnknownToken = unkToken is not null && vocab.ContainsKey(unkToken) ? unkToken : null,
            FuseUnknownTokens = fuseUnk,
            ContinuingSubwordPrefix = string.IsNullOrEmpty(continuingSubwordPrefix) ? null : continuingSubwordPrefix,
            EndOfWordSuffix = string.IsNullOrEmpty(endOfWordSuffix) ? null : endOfWordSuffix,
        };
        _bpe = BpeTokenizer.Create(options);
    }

    public void Encode(string piece, List<int> ids)
    {
        if (_ignoreMerges && _vocab.TryGetValue(ByteLevel.Encode(piece), out int id))
        {
            ids.Add(id);
            return;
        }
        ids.AddRange(_bpe.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
    }
}

/// <summary>
/// HF <c>tokenizers</c>' BPE algorithm (<c>Word::merge_all</c>): symbols start as characters (or byte tokens with
/// <c>byte_fallback</c>, or a fused unknown token), then the adjacent pair with the lowest merge rank is merged,
/// leftmost first, until none is left.
/// </summary>
/// <remarks>
/// Used for the non-byte-level BPE models: SentencePiece <c>tokenizer.model</c> files and Metaspace-style
/// <c>tokenizer.json</c> files with <c>byte_fallback</c>. Microsoft.ML.Tokenizers' SentencePiece BPE breaks ties between
/// equal-score merges differently from HF (for "▁▁▁" it gives "▁"+"▁▁" where HF and sentencepiece give "▁▁"+"▁") and its
/// <see cref="BpeTokenizer"/> has no byte fallback, so neither reproduces HF's ids for these models.
/// </remarks>
internal sealed class RankedBpeModel : IBpeModel
{
    private const int MaxCachedLength = 64;
    private const int MaxCacheEntries = 200_000;

    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<long, (int Rank, int NewId)> _merges;
    private readonly bool _byteLevel, _byteFallback, _fuseUnk, _ignoreMerges;
    private readonly int _unkId;
    private readonly string? _prefix, _suffix;
    private readonly int[]? _byteTokenIds;
    private readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);

    public RankedBpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string Left, string Right)> merges, bool byteLevel,
        string? unkToken, bool fuseUnk, bool byteFallback, bool ignoreMerges,
        string? continuingSubwordPrefix = null, string? endOfWordSuffix = null, string file = "tokenizer")
    {
        _vocab = vocab;
        _byteLevel = byteLevel;
        _fuseUnk = fuseUnk;
        _ignoreMerges = ignoreMerges;
        _prefix = string.IsNullOrEmpty(continuingSubwordPrefix) ? null : continuingSubwordPrefix;
        _suffix = string.IsNullOrEmpty(endOfWordSuffix) ? null : endOfWordSuffix;
        _unkId = unkToken is not null && vocab.TryGetValue(unkToken, out int u) ? u : -1;

        if (byteFallback)
        {
            _byteTokenIds = new int[256];
            for (int b = 0; b < 256; b++)
                _byteTokenIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        }
        _byteFallback = byteFallback;

        _merges = new Dictionary<long, (int, int)>(merges.Count);
        int prefixLength = _prefix?.Length ?? 0;
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (left, right) = merges[rank];
            if (!vocab.TryGetValue(left, out int a) || !vocab.TryGetValue(right, out int b))
                throw new TokenizerException($"{file}: merge '{left} {right}' uses a token missing from the vocabulary.");
            string merged = _prefix is not null && right.StartsWith(_prefix, StringComparison.Ordinal) ? left + right[prefixLength..] : left + right;
            if (!vocab.TryGetValue(merged, out int newId))
                throw new TokenizerException($"{file}: merge '{left} {right}' makes '{merged}', which is missing from the vocabulary.");
            _merges[Key(a, b)] = (rank, newId); // a repeated pair keeps its last rank, as HF's HashMap collect does
        }
    }

    private static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    public void Encode(string piece, List<int> ids)
    {
        string word = _byteLevel ? ByteLevel.Encode(piece) : piece;
        if (_ignoreMerges && _vocab.TryGetValue(word, out int whole))
        {
            ids.Add(whole);
            return;
        }
        if (word.Length <= MaxCachedLength && _cache.TryGetValue(word, out var cached))
        {
            ids.AddRange(cached);
            return;
        }
        int[] result = MergeWord(word);
        if (word.Length <= MaxCachedLength && _cache.Count < MaxCacheEntries) _cache.TryAdd(word, result);
        ids.AddRange(result);
    }

    private int[] MergeWord(string word)
    {
        var symbols = new List<int>(word.Length);
        bool lastWasUnk = false;
        int index = 0;
        foreach (Rune rune in word.EnumerateRunes())
        {
            string s = rune.ToString();
            bool first = index == 0;
            index += rune.Utf16SequenceLength;
            bool last = index >= word.Length;
            string key = s;
            if (_prefix is not null && !first) key = _prefix + key;
            if (_suffix is not null && last) key += _suffix;

            if (_vocab.TryGetValue(key, out int id))
            {
                symbols.Add(id);
                lastWasUnk = false;
                continue;
            }
            if (_byteFallback && TryAddBytes(s, symbols))
            {
                lastWasUnk = false;
                continue;
            }
            if (_unkId >= 0)
            {
                if (!(_fuseUnk && lastWasUnk)) symbols.Add(_unkId);
                lastWasUnk = true;
            }
        }
        return Merge(symbols);
    }

    private bool TryAddBytes(string s, List<int> symbols)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(s);
        foreach (byte b in bytes) if (_byteTokenIds![b] < 0) return false;
        foreach (byte b in bytes) symbols.Add(_byteTokenIds![b]);
        return true;
    }

    private int[] Merge(List<int> symbols)
    {
        int n = symbols.Count;
        if (n < 2) return symbols.ToArray();
        int[] id = symbols.ToArray();
        int[] prev = new int[n], next = new int[n];
        bool[] alive = new bool[n];
        for (int i = 0; i < n; i++)
        {
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
            alive[i] = true;
        }
        // Priority (rank, position): lowest rank first, then leftmost, as HF's Merge ordering.
        var queue = new PriorityQueue<(int Pos, int NewId), long>();
        void Push(int pos)
        {
            int right = next[pos];
            if (right >= 0 && _merges.TryGetValue(Key(id[pos], id[right]), out var m))
                queue.Enqueue((pos, m.NewId), ((long)m.Rank << 32) | (uint)pos);
        }
        for (int i = 0; i + 1 < n; i++) Push(i);

        while (queue.TryDequeue(out var top, out _))
        {
            int pos = top.Pos;
            if (!alive[pos]) continue;
            int right = next[pos];
            if (right < 0) continue;
            if (!_merges.TryGetValue(Key(id[pos], id[right]), out var m) || m.NewId != top.NewId) continue;

            id[pos] = m.NewId;
            alive[right] = false;
            next[pos] = next[right];
            if (next[right] >= 0) prev[next[right]] = pos;
            if (prev[pos] >= 0) Push(prev[pos]);
            Push(pos);
        }

        var result = new List<int>(n);
        for (int i = 0; i >= 0; i = next[i]) result.Add(id[i]);
        return result.ToArray();
    }
}
