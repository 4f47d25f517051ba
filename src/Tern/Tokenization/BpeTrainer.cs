using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.RegularExpressions;
using Tern.Runtime;

namespace Tern.Tokenization;

/// <summary>Options of <see cref="BpeTrainer"/>.</summary>
public sealed record BpeTrainerOptions
{
    /// <summary>
    /// Size of the vocabulary to learn, special tokens and the 256 byte tokens included (HF's <c>vocab_size</c>).
    /// Training stops earlier, with a smaller vocabulary, when no pair of symbols occurs <see cref="MinFrequency"/> times any more.
    /// </summary>
    public int VocabSize { get; init; } = 8192;

    /// <summary>Special tokens, given the first ids in this order; <see cref="BosToken"/>, <see cref="EosToken"/> and
    /// <see cref="PadToken"/> are added after them when not listed. They are cut out of the training text, never learned from.</summary>
    public IReadOnlyList<string> SpecialTokens { get; init; } = new[] { "<|endoftext|>" };

    /// <summary>The beginning-of-sequence token written to <c>tokenizer_config.json</c>, or null for none.</summary>
    public string? BosToken { get; init; } = "<|endoftext|>";

    /// <summary>The end-of-sequence token written to <c>tokenizer_config.json</c>, or null for none.</summary>
    public string? EosToken { get; init; } = "<|endoftext|>";

    /// <summary>The padding token written to <c>tokenizer_config.json</c>, or null for none.</summary>
    public string? PadToken { get; init; }

    /// <summary>A pair must occur at least this often (counting repeated words) to be merged.</summary>
    public int MinFrequency { get; init; } = 2;

    /// <summary><c>model_max_length</c> in <c>tokenizer_config.json</c>: the context length of the models that will use it.</summary>
    public int ModelMaxLength { get; init; } = 1024;
}

/// <summary>Progress of <see cref="BpeTrainer"/>: <see cref="Stage"/> is <c>"counting"</c> (units: characters of input)
/// or <c>"merging"</c> (units: vocabulary entries).</summary>
public sealed record BpeTrainingProgress(string Stage, long Done, long Total);

/// <summary>What <see cref="BpeTrainer.Train"/> produced.</summary>
/// <param name="Directory">The folder holding <c>tokenizer.json</c> and <c>tokenizer_config.json</c>.</param>
/// <param name="VocabSize">Learned vocabulary size, special tokens included: <see cref="BpeTrainerOptions.VocabSize"/> unless the text ran out of pairs.</param>
/// <param name="Merges">Number of merge rules.</param>
/// <param name="UniqueWords">Distinct pre-tokens counted.</param>
/// <param name="Words">Pre-tokens counted, repeats included.</param>
/// <param name="Elapsed">Time spent merging and writing (counting happens in <see cref="BpeTrainer.AddText"/>).</param>
public sealed record BpeTrainingResult(string Directory, int VocabSize, int Merges, int UniqueWords, long Words, TimeSpan Elapsed);

/// <summary>
/// Trains a GPT-2 style byte-level BPE tokenizer and writes it as a Hugging Face folder (<c>tokenizer.json</c> +
/// <c>tokenizer_config.json</c>) that <see cref="TernTokenizer.Load"/> and HF <c>tokenizers</c> both load.
/// </summary>
/// <remarks>
/// <para>The text is split on special tokens, then into pre-tokens with GPT-2's regex (as the <c>ByteLevel</c> pre-tokenizer
/// does); each distinct pre-token is counted once (<see cref="AddText"/>, <see cref="AddFile"/>). <see cref="Train"/> starts
/// from the 256 byte symbols (GPT-2's byte ↔ character table) and repeatedly merges the most frequent adjacent pair over the
/// distinct words, keeping pair counts up to date incrementally (only words holding the merged pair are touched) and
/// finding the best pair through a priority queue with lazily refreshed counts: the standard algorithm of HF's trainer.</para>
/// <para>Deterministic: ties between equally frequent pairs go to the pair with the smaller (left id, right id); ids are
/// special tokens first, then the byte symbols in character order, then merged tokens in the order learned. A merge
/// that rebuilds an existing token (<c>ab</c>+<c>c</c> after <c>a</c>+<c>bc</c>) is recorded without a new id, as in HF.</para>
/// </remarks>
public sealed class BpeTrainer
{
    private static readonly Regex Gpt2 = new(ByteLevel.Gpt2Pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);
    private const int ChunkChars = 1 << 20;

    private readonly BpeTrainerOptions _options;
    private readonly string[] _specials;
    private readonly AddedTokenSplitter _splitter;
    private readonly Dictionary<string, long> _counts = new(StringComparer.Ordinal);
    private readonly object _lock = new();

    private BpeTrainer(BpeTrainerOptions options, string[] specials)
    {
        _options = options;
        _specials = specials;
        _splitter = new AddedTokenSplitter(specials.Select((s, i) => new AddedToken(s, i, Special: true)));
    }

    /// <summary>The options, as given.</summary>
    public BpeTrainerOptions Options => _options;

    /// <summary>The special tokens with their ids (their index).</summary>
    public IReadOnlyList<string> SpecialTokens => _specials;

    /// <summary>Pre-tokens counted so far, repeats included.</summary>
    public long WordCount { get { lock (_lock) return _counts.Values.Sum(); } }

    /// <summary>Creates a trainer after checking <paramref name="options"/>.</summary>
    /// <exception cref="ArgumentException">An empty or repeated special token, a vocabulary smaller than 256 bytes +
    /// the special tokens, or a non-positive <see cref="BpeTrainerOptions.MinFrequency"/> or <see cref="BpeTrainerOptions.ModelMaxLength"/>.</exception>
    public static BpeTrainer Create(BpeTrainerOptions? options = null)
    {
        options ??= new BpeTrainerOptions();
        var specials = new List<string>();
        foreach (string? s in (options.SpecialTokens ?? Array.Empty<string>()).Concat(new[] { options.BosToken, options.EosToken, options.PadToken }.Where(t => t is not null)))
        {
            if (string.IsNullOrEmpty(s))
                throw new ArgumentException("Special tokens must be non-empty strings.");
            if (!specials.Contains(s, StringComparer.Ordinal)) specials.Add(s);
        }
        int minimum = 256 + specials.Count;
        if (options.VocabSize < minimum)
            throw new ArgumentException($"Vocabulary size {options.VocabSize} is too small: it must hold the 256 byte tokens and the {specials.Count} " +
                $"special token(s), so at least {minimum}.");
        if (options.MinFrequency < 1)
            throw new ArgumentException($"MinFrequency must be at least 1 (got {options.MinFrequency}).");
        if (options.ModelMaxLength < 1)
            throw new ArgumentException($"ModelMaxLength must be positive (got {options.ModelMaxLength}).");
        return new BpeTrainer(options, specials.ToArray());
    }

    /// <summary>
    /// Trains on <paramref name="inputFiles"/> (UTF-8 text) and writes the tokenizer to <paramref name="outputDirectory"/>.
    /// </summary>
    /// <exception cref="ArgumentException">No input files, or input with no text.</exception>
    /// <exception cref="FileNotFoundException">An input file does not exist.</exception>
    public static BpeTrainingResult TrainFiles(IEnumerable<string> inputFiles, string outputDirectory, BpeTrainerOptions? options = null,
        IProgress<BpeTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(inputFiles);
        ArgumentNullException.ThrowIfNull(outputDirectory);
        var files = inputFiles.ToList();
        if (files.Count == 0) throw new ArgumentException("No input files given.", nameof(inputFiles));
        foreach (string f in files)
            if (!File.Exists(f)) throw new FileNotFoundException($"Input file '{Path.GetFullPath(f)}' does not exist.", f);
        var trainer = Create(options);
        foreach (string f in files) trainer.AddFile(f, progress, cancellationToken);
        return trainer.Train(outputDirectory, progress, cancellationToken);
    }

    /// <summary>Counts the pre-tokens of a UTF-8 text file (read whole).</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public void AddFile(string path, IProgress<BpeTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"Input file '{Path.GetFullPath(path)}' does not exist.", path);
        AddText(File.ReadAllText(path, Encoding.UTF8), progress, cancellationToken);
    }

    /// <summary>
    /// Counts the pre-tokens of <paramref name="text"/>. Special tokens written in the text are cut out (they separate
    /// documents). Large texts are counted in parallel, in chunks cut where the GPT-2 regex splits anyway, so the counts
    /// equal those of one pass.
    /// </summary>
    public void AddText(string text, IProgress<BpeTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(text);
        var chunks = Chunk(text);
        long done = 0;
        var options = new ParallelOptions { CancellationToken = cancellationToken };
        Parallel.ForEach(chunks, options, () => new Dictionary<string, long>(StringComparer.Ordinal),
            (chunk, _, local) =>
            {
                CountChunk(text, chunk.Start, chunk.Length, local);
                long d = Interlocked.Add(ref done, chunk.Length);
                progress?.Report(new BpeTrainingProgress("counting", d, text.Length));
                return local;
            },
            local =>
            {
                lock (_lock)
                    foreach (var (word, n) in local)
                        CollectionsMarshal.GetValueRefOrAddDefault(_counts, word, out _) += n;
            });
    }

    /// <summary>Cuts at a newline that follows a non-space character: no GPT-2 pre-token and no special token spans such a point.</summary>
    private static List<(int Start, int Length)> Chunk(string text)
    {
        var chunks = new List<(int, int)>();
        int start = 0;
        while (text.Length - start > ChunkChars)
        {
            int cut = -1;
            for (int i = start + ChunkChars; i < text.Length; i++)
                if (text[i] == '\n' && !char.IsWhiteSpace(text[i - 1])) { cut = i; break; }
            if (cut < 0) break;
            chunks.Add((start, cut - start));
            start = cut;
        }
        chunks.Add((start, text.Length - start));
        return chunks;
    }

    private void CountChunk(string text, int start, int length, Dictionary<string, long> counts)
    {
        var lookup = counts.GetAlternateLookup<ReadOnlySpan<char>>();
        string chunk = text.Substring(start, length);
        foreach (var segment in _splitter.Split(chunk))
        {
            if (segment.IsAddedToken || segment.Length == 0) continue;
            ReadOnlySpan<char> span = chunk.AsSpan(segment.Start, segment.Length);
            foreach (var m in Gpt2.EnumerateMatches(span))
                CollectionsMarshal.GetValueRefOrAddDefault(lookup, span.Slice(m.Index, m.Length), out _)++;
        }
    }

    /// <summary>
    /// Learns the merges from the text counted so far and writes <c>tokenizer.json</c> and <c>tokenizer_config.json</c>
    /// into <paramref name="outputDirectory"/> (created if needed; each file written to a temporary file and renamed).
    /// </summary>
    /// <exception cref="ArgumentException">No text was counted.</exception>
    public BpeTrainingResult Train(string outputDirectory, IProgress<BpeTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(outputDirectory);
        var clock = Stopwatch.StartNew();
        KeyValuePair<string, long>[] entries;
        lock (_lock) entries = _counts.OrderBy(e => e.Key, StringComparer.Ordinal).ToArray();
        if (entries.Length == 0)
            throw new ArgumentException("The training input holds no text (empty files, or only special tokens).");

        // Ids: special tokens, then the 256 byte symbols in character order, then merges.
        var tokens = new List<string>(_options.VocabSize);
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (string s in _specials) { ids[s] = tokens.Count; tokens.Add(s); }
        var byteId = new int[256];
        foreach (char c in ByteLevel.ByteToChar.Order())
        {
            string s = c.ToString();
            if (!ids.TryGetValue(s, out int id)) { id = tokens.Count; ids[s] = id; tokens.Add(s); }
            byteId[Array.IndexOf(ByteLevel.ByteToChar, c)] = id;
        }

        var words = new int[entries.Length][];
        var freq = new long[entries.Length];
        for (int w = 0; w < entries.Length; w++)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(entries[w].Key);
            var symbols = new int[bytes.Length];
            for (int i = 0; i < bytes.Length; i++) symbols[i] = byteId[bytes[i]];
            words[w] = symbols;
            freq[w] = entries[w].Value;
        }

        var pairCounts = new Dictionary<long, long>();
        var where = new Dictionary<long, HashSet<int>>();
        for (int w = 0; w < words.Length; w++)
        {
            var s = words[w];
            for (int i = 0; i + 1 < s.Length; i++)
            {
                long p = Pair(s[i], s[i + 1]);
                CollectionsMarshal.GetValueRefOrAddDefault(pairCounts, p, out _) += freq[w];
                ref var set = ref CollectionsMarshal.GetValueRefOrAddDefault(where, p, out _);
                (set ??= new HashSet<int>()).Add(w);
            }
        }
        var queue = new PriorityQueue<long, (long NegCount, long Pair)>();
        foreach (var (p, n) in pairCounts)
            if (n >= _options.MinFrequency) queue.Enqueue(p, (-n, p));

        var merges = new List<(int Left, int Right)>();
        var delta = new Dictionary<long, long>();
        var rebuilt = new List<int>();
        while (tokens.Count < _options.VocabSize && queue.TryDequeue(out long pair, out var priority))
        {
            cancellationToken.ThrowIfCancellationRequested();
            long count = pairCounts.GetValueOrDefault(pair);
            if (count != -priority.NegCount)
            {
                if (count >= _options.MinFrequency) queue.Enqueue(pair, (-count, pair));
                continue;
            }
            int a = (int)(pair >> 32), b = (int)(pair & 0xFFFFFFFF);
            string merged = tokens[a] + tokens[b];
            if (!ids.TryGetValue(merged, out int c)) { c = tokens.Count; ids[merged] = c; tokens.Add(merged); }
            merges.Add((a, b));

            delta.Clear();
            foreach (int w in where[pair])
            {
                var s = words[w];
                rebuilt.Clear();
                bool changed = false;
                for (int i = 0; i < s.Length; i++)
                {
                    if (i + 1 < s.Length && s[i] == a && s[i + 1] == b) { rebuilt.Add(c); i++; changed = true; }
                    else rebuilt.Add(s[i]);
                }
                if (!changed) continue;
                long f = freq[w];
                for (int i = 0; i + 1 < s.Length; i++) CollectionsMarshal.GetValueRefOrAddDefault(delta, Pair(s[i], s[i + 1]), out _) -= f;
                for (int i = 0; i + 1 < rebuilt.Count; i++)
                {
                    long p = Pair(rebuilt[i], rebuilt[i + 1]);
                    CollectionsMarshal.GetValueRefOrAddDefault(delta, p, out _) += f;
                    if (rebuilt[i] == c || rebuilt[i + 1] == c)
                    {
                        ref var set = ref CollectionsMarshal.GetValueRefOrAddDefault(where, p, out _);
                        (set ??= new HashSet<int>()).Add(w);
                    }
                }
                words[w] = rebuilt.ToArray();
            }
            where.Remove(pair);
            foreach (var (p, d) in delta)
            {
                if (d == 0) continue;
                ref long n = ref CollectionsMarshal.GetValueRefOrAddDefault(pairCounts, p, out _);
                n += d;
                if (d > 0 && n >= _options.MinFrequency) queue.Enqueue(p, (-n, p));
                if (n <= 0) pairCounts.Remove(p);
            }
            if (merges.Count % 64 == 0) progress?.Report(new BpeTrainingProgress("merging", tokens.Count, _options.VocabSize));
        }
        progress?.Report(new BpeTrainingProgress("merging", tokens.Count, _options.VocabSize));

        string dir = Path.GetFullPath(outputDirectory);
        System.IO.Directory.CreateDirectory(dir);
        AtomicFile.Write(Path.Combine(dir, "tokenizer.json"), stream => WriteTokenizerJson(stream, tokens, merges));
        AtomicFile.Write(Path.Combine(dir, "tokenizer_config.json"), WriteTokenizerConfig);
        return new BpeTrainingResult(dir, tokens.Count, merges.Count, entries.Length, entries.Sum(e => e.Value), clock.Elapsed);
    }

    private static long Pair(int left, int right) => ((long)left << 32) | (uint)right;

    private static readonly JsonWriterOptions WriterOptions = new() { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>The shape HF <c>tokenizers</c> writes for a byte-level BPE (as in GPT-NeoX's <c>tokenizer.json</c>).</summary>
    private void WriteTokenizerJson(Stream stream, List<string> tokens, List<(int Left, int Right)> merges)
    {
        using var w = new Utf8JsonWriter(stream, WriterOptions);
        w.WriteStartObject();
        w.WriteString("version", "1.0");
        w.WriteNull("truncation");
        w.WriteNull("padding");
        w.WriteStartArray("added_tokens");
        for (int i = 0; i < _specials.Length; i++)
        {
            w.WriteStartObject();
            w.WriteNumber("id", i);
            w.WriteString("content", _specials[i]);
            w.WriteBoolean("single_word", false);
            w.WriteBoolean("lstrip", false);
            w.WriteBoolean("rstrip", false);
            w.WriteBoolean("normalized", false);
            w.WriteBoolean("special", true);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteNull("normalizer");
        WriteByteLevel(w, "pre_tokenizer", addPrefixSpace: false, trimOffsets: true);
        WriteByteLevel(w, "post_processor", addPrefixSpace: true, trimOffsets: false);
        WriteByteLevel(w, "decoder", addPrefixSpace: true, trimOffsets: true);
        w.WriteStartObject("model");
        w.WriteString("type", "BPE");
        w.WriteNull("dropout");
        w.WriteNull("unk_token");
        w.WriteNull("continuing_subword_prefix");
        w.WriteNull("end_of_word_suffix");
        w.WriteBoolean("fuse_unk", false);
        w.WriteBoolean("byte_fallback", false);
        w.WriteBoolean("ignore_merges", false);
        w.WriteStartObject("vocab");
        for (int i = 0; i < tokens.Count; i++) w.WriteNumber(tokens[i], i);
        w.WriteEndObject();
        w.WriteStartArray("merges");
        foreach (var (l, r) in merges)
        {
            w.WriteStartArray();
            w.WriteStringValue(tokens[l]);
            w.WriteStringValue(tokens[r]);
            w.WriteEndArray();
        }
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void WriteByteLevel(Utf8JsonWriter w, string name, bool addPrefixSpace, bool trimOffsets)
    {
        w.WriteStartObject(name);
        w.WriteString("type", "ByteLevel");
        w.WriteBoolean("add_prefix_space", addPrefixSpace);
        w.WriteBoolean("trim_offsets", trimOffsets);
        w.WriteBoolean("use_regex", true);
        w.WriteEndObject();
    }

    private void WriteTokenizerConfig(Stream stream)
    {
        using var w = new Utf8JsonWriter(stream, WriterOptions);
        w.WriteStartObject();
        w.WriteString("tokenizer_class", "PreTrainedTokenizerFast");
        if (_options.BosToken is not null) w.WriteString("bos_token", _options.BosToken);
        if (_options.EosToken is not null) w.WriteString("eos_token", _options.EosToken);
        if (_options.PadToken is not null) w.WriteString("pad_token", _options.PadToken);
        w.WriteNumber("model_max_length", _options.ModelMaxLength);
        w.WriteBoolean("clean_up_tokenization_spaces", false);
        w.WriteEndObject();
    }

}
