using System.Text;
using System.Text.Json;

namespace Tern.Tokenization;

/// <summary>
/// A Hugging Face tokenizer loaded from a model folder, producing the same ids as <c>AutoTokenizer</c> (transformers 5)
/// for the BPE tokenizers causal LMs use: <c>tokenizer.json</c> (GPT-NeoX/Pythia, Llama-3, Qwen2, Mistral, ...),
/// SentencePiece <c>tokenizer.model</c> (Llama-2 style) and GPT-2 <c>vocab.json</c> + <c>merges.txt</c> (GPT-2, OPT).
/// </summary>
/// <remarks>
/// The pipeline is HF's: added tokens are cut out of the raw text first (whole-string matches, never split by BPE),
/// each remaining segment is normalized, pre-tokenized and run through BPE, and the post-processor's special tokens
/// (BOS) are added when <c>addSpecialTokens</c> is true. Decoding runs HF's decoder chain. Instances are immutable
/// and safe to use from several threads.
/// </remarks>
public sealed class TernTokenizer
{
    private readonly IBpeModel _model;
    private readonly TextNormalizer? _normalizer;
    private readonly PreTokenizerStep? _preTokenizer;
    private readonly DecoderStep _decoder;
    private readonly AddedTokenSplitter _addedTokens;
    private readonly Dictionary<int, AddedToken> _addedById;
    private readonly Dictionary<string, int> _addedByContent;
    private readonly Dictionary<string, int> _vocab;
    private readonly string?[] _idToToken;
    private readonly int[] _prefixIds, _suffixIds;
    private readonly bool _cleanUpTokenizationSpaces;
    private readonly bool _byteLevel;

    private TernTokenizer(Parts p)
    {
        Format = p.Format;
        Directory = p.Directory;
        _model = p.Model;
        _normalizer = p.Normalizer;
        _preTokenizer = p.PreTokenizer;
        _decoder = p.Decoder;
        _vocab = p.Vocab;
        _byteLevel = p.ByteLevel;
        _cleanUpTokenizationSpaces = p.Config.CleanUpTokenizationSpaces;

        _addedTokens = new AddedTokenSplitter(p.AddedTokens);
        _addedById = new Dictionary<int, AddedToken>();
        _addedByContent = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var t in _addedTokens.Tokens)
        {
            _addedById.TryAdd(t.Id, t);
            _addedByContent.TryAdd(t.Content, t.Id);
        }

        int maxId = Math.Max(_vocab.Count == 0 ? -1 : _vocab.Values.Max(), _addedById.Count == 0 ? -1 : _addedById.Keys.Max());
        _idToToken = new string?[maxId + 1];
        foreach (var (token, id) in _vocab) if (id >= 0) _idToToken[id] ??= token;
        foreach (var (id, t) in _addedById) if (id >= 0) _idToToken[id] = t.Content;
        VocabSize = _idToToken.Count(t => t is not null);

        var cfg = p.Config;
        BosToken = p.BosToken;
        EosToken = p.EosToken;
        PadToken = cfg.Pad.Or(null);
        BosTokenId = BosToken is null ? (cfg.Bos.Mentioned ? null : cfg.GenerationBosId) : TokenToId(BosToken);
        EosTokenId = EosToken is null ? null : TokenToId(EosToken);
        PadTokenId = (PadToken is null ? null : TokenToId(PadToken)) ?? cfg.GenerationPadId;
        EosTokenIds = cfg.GenerationEosIds is { Count: > 0 } gen ? gen.AsReadOnly()
            : EosTokenId is int eos ? new[] { eos } : Array.Empty<int>();
        ChatTemplate = cfg.ChatTemplate;

        // tokenizer_config.json's add_bos_token / add_eos_token, when given, override the post-processor
        // (transformers' update_post_processor does this for Llama, Gemma, Mistral, ... tokenizers).
        var prefix = new List<int>(p.PrefixIds);
        var suffix = new List<int>(p.SuffixIds);
        if (BosTokenId is int bos && cfg.AddBosToken is bool addBos)
        {
            bool has = prefix.Count > 0 && prefix[0] == bos;
            if (addBos && !has) prefix.Insert(0, bos);
            else if (!addBos && has) prefix.RemoveAt(0);
        }
        if (EosTokenId is int eosId && cfg.AddEosToken is bool addEos)
        {
            bool has = suffix.Count > 0 && suffix[^1] == eosId;
            if (addEos && !has) suffix.Add(eosId);
            else if (!addEos && has) suffix.RemoveAt(suffix.Count - 1);
        }
        _prefixIds = prefix.ToArray();
        _suffixIds = suffix.ToArray();
    }

    /// <summary>The format the tokenizer was loaded from.</summary>
    public TokenizerFormat Format { get; }

    /// <summary>The folder the tokenizer was loaded from.</summary>
    public string Directory { get; }

    /// <summary>Number of distinct token ids: the model vocabulary plus added tokens (HF's <c>len(tokenizer)</c>).</summary>
    public int VocabSize { get; }

    /// <summary>The beginning-of-sequence token string (<c>bos_token</c>), if the tokenizer has one.</summary>
    public string? BosToken { get; }

    /// <summary>The id of <see cref="BosToken"/>; from <c>generation_config.json</c> only when no tokenizer file names a BOS token.</summary>
    public int? BosTokenId { get; }

    /// <summary>The tokenizer's end-of-sequence token string (<c>eos_token</c>).</summary>
    public string? EosToken { get; }

    /// <summary>The id of <see cref="EosToken"/> (HF's <c>tokenizer.eos_token_id</c>).</summary>
    public int? EosTokenId { get; }

    /// <summary>
    /// The ids that end generation: <c>generation_config.json</c>'s <c>eos_token_id</c> (an int or a list) when present,
    /// else the tokenizer's <see cref="EosTokenId"/>.
    /// </summary>
    public IReadOnlyList<int> EosTokenIds { get; }

    /// <summary>The padding token string, if any.</summary>
    public string? PadToken { get; }

    /// <summary>The padding id: the tokenizer's pad token, else <c>generation_config.json</c>'s <c>pad_token_id</c>.</summary>
    public int? PadTokenId { get; }

    /// <summary>The Jinja chat template text from the tokenizer files, or null. See <see cref="CreateChatFormatter"/>.</summary>
    public string? ChatTemplate { get; }

    /// <summary>True when <see cref="Encode"/> with <c>addSpecialTokens</c> prepends <see cref="BosTokenId"/>.</summary>
    public bool AddsBosToken => _prefixIds.Length > 0 && BosTokenId is int bos && _prefixIds[0] == bos;

    /// <summary>
    /// Loads the tokenizer of a Hugging Face model folder. Uses <c>tokenizer.json</c> when present, else
    /// <c>tokenizer.model</c>, else <c>vocab.json</c> + <c>merges.txt</c>; reads <c>tokenizer_config.json</c>,
    /// <c>special_tokens_map.json</c>, <c>added_tokens.json</c> and <c>generation_config.json</c> when present.
    /// </summary>
    /// <exception cref="TokenizerException">No tokenizer files, a malformed file, or a tokenizer kind Tern does not implement.</exception>
    public static TernTokenizer Load(string modelDirectory)
    {
        ArgumentNullException.ThrowIfNull(modelDirectory);
        string dir = Path.GetFullPath(modelDirectory);
        if (!System.IO.Directory.Exists(dir))
            throw new TokenizerException($"Tokenizer folder '{dir}' does not exist.");

        string json = Path.Combine(dir, "tokenizer.json");
        string spModel = Path.Combine(dir, "tokenizer.model");
        string vocab = Path.Combine(dir, "vocab.json");
        string merges = Path.Combine(dir, "merges.txt");
        bool hasVocab = File.Exists(vocab), hasMerges = File.Exists(merges);
        if (!File.Exists(json) && !File.Exists(spModel) && !(hasVocab && hasMerges))
        {
            string partial = hasVocab ? " (vocab.json is there but merges.txt is missing)" : hasMerges ? " (merges.txt is there but vocab.json is missing)" : "";
            throw new TokenizerException($"No tokenizer found in '{dir}': looked for tokenizer.json, tokenizer.model, " +
                $"or vocab.json + merges.txt{partial}. Copy the tokenizer files of the model's Hugging Face repository into that folder.");
        }

        var config = TokenizerConfigFiles.Load(dir);
        var parts = File.Exists(json) ? LoadTokenizerJson(dir, json, config)
            : File.Exists(spModel) ? LoadSentencePiece(dir, spModel, config)
            : LoadVocabMerges(dir, vocab, merges, config);
        return new TernTokenizer(parts);
    }

    /// <summary>
    /// Token ids for <paramref name="text"/>, identical to HF's <c>tokenizer.encode(text, add_special_tokens=...)</c>.
    /// Added/special tokens written in the text (e.g. <c>&lt;|eot_id|&gt;</c>) become their ids.
    /// </summary>
    /// <param name="text">The text to encode.</param>
    /// <param name="addSpecialTokens">Add the tokens the tokenizer adds around a sequence (usually BOS). Pass false for a
    /// prompt rendered by a chat template, which already contains them.</param>
    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 4);
        if (addSpecialTokens) ids.AddRange(_prefixIds);
        var pieces = new List<Piece>();
        foreach (var segment in _addedTokens.Split(text))
        {
            if (segment.IsAddedToken)
            {
                ids.Add(segment.TokenId);
                continue;
            }
            string s = text.Substring(segment.Start, segment.Length);
            if (_normalizer is not null) s = _normalizer.Normalize(s);
            if (s.Length == 0) continue;
            var piece = new Piece(s, segment.Start == 0);
            if (_preTokenizer is null)
            {
                _model.Encode(s, ids);
                continue;
            }
            pieces.Clear();
            _preTokenizer.Apply(piece, pieces);
            foreach (var p in pieces) if (p.Text.Length > 0) _model.Encode(p.Text, ids);
        }
        if (addSpecialTokens) ids.AddRange(_suffixIds);
        return ids;
    }

    /// <summary>Text for <paramref name="ids"/>, identical to HF's <c>tokenizer.decode(ids, skip_special_tokens=...)</c>. Unknown ids are ignored.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var tokens = new List<string>();
        foreach (int id in ids)
        {
            if (_addedById.TryGetValue(id, out var added))
            {
                if (!(skipSpecialTokens && added.Special)) tokens.Add(added.Content);
            }
            else if (id >= 0 && id < _idToToken.Length && _idToToken[id] is { } token)
            {
                tokens.Add(token);
            }
        }
        if (tokens.Count == 0) return "";
        string text = string.Concat(_decoder.Decode(tokens));
        return _cleanUpTokenizationSpaces ? CleanUpTokenization(text) : text;
    }

    /// <summary>A decoder for streaming generation: feed it ids one at a time, it returns text once whole characters are available.</summary>
    public StreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = true) => new(this, skipSpecialTokens);

    /// <summary>A formatter for <see cref="ChatTemplate"/> using this tokenizer's BOS/EOS strings.</summary>
    public ChatFormatter CreateChatFormatter() => new(Tokenization.ChatTemplate.Detect(ChatTemplate), BosToken, EosToken);

    /// <summary>The id of a token string (an added token or a vocabulary entry), or null.</summary>
    public int? TokenToId(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        if (_addedByContent.TryGetValue(token, out int id)) return id;
        return _vocab.TryGetValue(token, out id) ? id : null;
    }

    /// <summary>The token string of an id (byte-level tokens in their mapped form, e.g. "Ġthe"), or null.</summary>
    public string? IdToToken(int id) => id >= 0 && id < _idToToken.Length ? _idToToken[id] : null;

    /// <summary>One past the largest token id (ids below it may have holes).</summary>
    internal int IdLimit => _idToToken.Length;

    /// <summary>The UTF-8 bytes a vocabulary token adds to the text wherever it stands (a byte-level token may hold part of a
    /// character; SentencePiece's ▁ is a space, <c>&lt;0xNN&gt;</c> its byte), or null for added/special tokens and unknown
    /// ids. What constrained decoding matches tokens by, and what logprobs report as a token's <c>bytes</c>.</summary>
    public byte[]? TokenBytes(int id)
    {
        if (id < 0 || id >= _idToToken.Length || _idToToken[id] is not { } token || _addedById.ContainsKey(id)) return null;
        if (_byteLevel)
        {
            var bytes = new List<byte>(token.Length);
            ByteLevel.AppendBytes(token, bytes);
            return bytes.ToArray();
        }
        if (token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>'
            && byte.TryParse(token.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
            return [b];
        return System.Text.Encoding.UTF8.GetBytes(token.Replace('\u2581', ' '));
    }

    /// <summary>A one-line summary for <c>tern info</c>.</summary>
    public string Describe()
    {
        string format = Format switch
        {
            TokenizerFormat.TokenizerJson => "tokenizer.json",
            TokenizerFormat.SentencePiece => "tokenizer.model (SentencePiece)",
            _ => "vocab.json + merges.txt",
        };
        static string Tok(string? s, int? id) => s is null ? "none" : id is int i ? $"{s}={i}" : $"{s}=?";
        string eos = EosTokenIds.Count > 0 ? "[" + string.Join(",", EosTokenIds) + "]" : "none";
        var chat = ChatTemplate is null ? "none" : Tokenization.ChatTemplate.Detect(ChatTemplate).Shape.ToString();
        return $"{format}, {(_byteLevel ? "byte-level " : "")}BPE, {VocabSize} tokens, BOS {Tok(BosToken, BosTokenId)}" +
               $"{(AddsBosToken ? " (added)" : "")}, EOS {Tok(EosToken, EosTokenId)}, stop ids {eos}, " +
               $"PAD {Tok(PadToken, PadTokenId)}, chat template: {chat}";
    }

    public override string ToString() => Describe();

    /// <summary>transformers' <c>clean_up_tokenization</c>, applied when <c>clean_up_tokenization_spaces</c> is true.</summary>
    private static string CleanUpTokenization(string text) => text
        .Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",").Replace(" ' ", "'")
        .Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");

    // ---------------------------------------------------------------- loaders

    private sealed class Parts
    {
        public required TokenizerFormat Format;
        public required string Directory;
        public required TokenizerConfigFiles Config;
        public required IBpeModel Model;
        public required Dictionary<string, int> Vocab;
        public required DecoderStep Decoder;
        public required List<AddedToken> AddedTokens;
        public TextNormalizer? Normalizer;
        public PreTokenizerStep? PreTokenizer;
        public bool ByteLevel;
        public List<int> PrefixIds = [];
        public List<int> SuffixIds = [];
        public string? BosToken;
        public string? EosToken;
    }

    /// <summary>Parses a JSON file; malformed JSON is a <see cref="TokenizerException"/> naming the file.</summary>
    private static JsonElement ReadJsonFile(string path)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new TokenizerException($"{path} is not valid JSON: {e.Message}", e);
        }
    }

    private static Parts LoadTokenizerJson(string dir, string path, TokenizerConfigFiles cfg)
    {
        JsonElement root = ReadJsonFile(path);

        var model = root.GetOrUndefined("model");
        if (model.ValueKind != JsonValueKind.Object) throw new TokenizerException($"{path} has no \"model\" object.");
        string type = model.GetStringOrNull("type") ?? (model.TryGetProperty("merges", out _) ? "BPE" : "unknown");
        if (type != "BPE")
            throw new TokenizerException($"{path}: tokenizer model type '{type}' is not supported. Tern implements BPE tokenizers " +
                "(GPT-2, GPT-NeoX, Llama, Mistral, Qwen, ...); WordPiece, Unigram and WordLevel models are not.");

        var vocab = ReadVocab(model.GetOrUndefined("vocab"), path);
        var merges = new List<(string, string)>();
        if (model.GetOrUndefined("merges") is { ValueKind: JsonValueKind.Array } mergesNode)
        {
            foreach (var m in mergesNode.EnumerateArray())
            {
                if (m.ValueKind == JsonValueKind.String)
                {
                    string s = m.GetString()!;
                    int space = s.IndexOf(' ', 1);
                    if (space < 0) throw new TokenizerException($"{path}: merge \"{s}\" is not two tokens separated by a space.");
                    merges.Add((s[..space], s[(space + 1)..]));
                }
                else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2)
                {
                    merges.Add((m[0].GetString() ?? "", m[1].GetString() ?? ""));
                }
                else throw new TokenizerException($"{path}: merge {m.GetRawText()} is neither \"a b\" nor [\"a\", \"b\"].");
            }
        }

        var preTokenizer = PreTokenizerStep.FromJson(root.GetOrUndefined("pre_tokenizer"), path);
        bool byteLevel = preTokenizer?.IsByteLevel ?? false;
        string? unk = model.GetStringOrNull("unk_token");
        bool fuseUnk = model.GetBoolOr("fuse_unk", false);
        bool byteFallback = model.GetBoolOr("byte_fallback", false);
        bool ignoreMerges = model.GetBoolOr("ignore_merges", false);
        string? subwordPrefix = model.GetStringOrNull("continuing_subword_prefix");
        string? wordSuffix = model.GetStringOrNull("end_of_word_suffix");

        IBpeModel bpe;
        if (byteLevel && !byteFallback)
        {
            try
            {
                bpe = new MlByteLevelBpeModel(vocab, merges, unk, subwordPrefix, wordSuffix, fuseUnk, ignoreMerges);
            }
            catch (Exception e) when (e is not TokenizerException)
            {
                // Microsoft.ML.Tokenizers refused the model (e.g. an unusual merge entry): use Tern's own BPE.
                bpe = new RankedBpeModel(vocab, merges, byteLevel: true, unk, fuseUnk, byteFallback, ignoreMerges, subwordPrefix, wordSuffix, path);
            }
        }
        else
        {
            bpe = new RankedBpeModel(vocab, merges, byteLevel, unk, fuseUnk, byteFallback, ignoreMerges, subwordPrefix, wordSuffix, path);
        }

        var added = new List<AddedToken>();
        if (root.GetOrUndefined("added_tokens") is { ValueKind: JsonValueKind.Array } addedNode)
        {
            foreach (var t in addedNode.EnumerateArray())
                if (t.GetIntOrNull("id") is int id && TokenizerConfigFiles.ParseAddedToken(t, id) is { } token) added.Add(token);
        }
        var known = added.Select(t => t.Id).ToHashSet();
        added.AddRange(cfg.AddedTokensDecoder.Where(t => !known.Contains(t.Id)));

        var (prefix, suffix) = ReadPostProcessor(root.GetOrUndefined("post_processor"), path);
        return new Parts
        {
            Format = TokenizerFormat.TokenizerJson,
            Directory = dir,
            Config = cfg,
            Model = bpe,
            Vocab = vocab,
            Normalizer = TextNormalizer.FromJson(root.GetOrUndefined("normalizer"), path),
            PreTokenizer = preTokenizer,
            Decoder = DecoderStep.FromJson(root.GetOrUndefined("decoder"), path),
            AddedTokens = added,
            ByteLevel = byteLevel,
            PrefixIds = prefix,
            SuffixIds = suffix,
            BosToken = cfg.Bos.Content,
            EosToken = cfg.Eos.Content,
        };
    }

    private static Dictionary<string, int> ReadVocab(JsonElement node, string path)
    {
        if (node.ValueKind != JsonValueKind.Object) throw new TokenizerException($"{path}: the vocabulary is not a JSON object of token → id.");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in node.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id))
                throw new TokenizerException($"{path}: vocabulary entry \"{p.Name}\" has no integer id.");
            vocab[p.Name] = id;
        }
        if (vocab.Count == 0) throw new TokenizerException($"{path}: the vocabulary is empty.");
        return vocab;
    }

    /// <summary>The ids a post-processor puts before and after a single sequence.</summary>
    private static (List<int> Prefix, List<int> Suffix) ReadPostProcessor(JsonElement node, string path)
    {
        var prefix = new List<int>();
        var suffix = new List<int>();
        void Walk(JsonElement p)
        {
            if (p.ValueKind != JsonValueKind.Object) return;
            switch (p.GetStringOrNull("type"))
            {
                case "Sequence":
                    foreach (var inner in p.GetProperty("processors").EnumerateArray()) Walk(inner);
                    break;
                case "TemplateProcessing":
                {
                    var specials = p.GetOrUndefined("special_tokens");
                    bool afterSequence = false;
                    foreach (var item in p.GetProperty("single").EnumerateArray())
                    {
                        if (item.TryGetProperty("Sequence", out _)) { afterSequence = true; continue; }
                        if (!item.TryGetProperty("SpecialToken", out var st)) continue;
                        string name = st.GetStringOrNull("id") ?? "";
                        if (specials.ValueKind != JsonValueKind.Object || !specials.TryGetProperty(name, out var def))
                            throw new TokenizerException($"{path}: post_processor template uses special token '{name}' without defining its ids.");
                        foreach (var id in def.GetProperty("ids").EnumerateArray()) (afterSequence ? suffix : prefix).Add(id.GetInt32());
                    }
                    break;
                }
                case "RobertaProcessing":
                case "BertProcessing":
                    prefix.Add(p.GetProperty("cls")[1].GetInt32());
                    suffix.Add(p.GetProperty("sep")[1].GetInt32());
                    break;
                case "ByteLevel":
                    break; // offsets only
                default:
                    throw new TokenizerException($"{path}: post_processor type '{p.GetStringOrNull("type")}' is not supported by Tern " +
                        "(supported: TemplateProcessing, ByteLevel, Sequence, RobertaProcessing, BertProcessing).");
            }
        }
        Walk(node);
        return (prefix, suffix);
    }

    private static Parts LoadVocabMerges(string dir, string vocabPath, string mergesPath, TokenizerConfigFiles cfg)
    {
        JsonElement vocabNode = ReadJsonFile(vocabPath);
        var vocab = ReadVocab(vocabNode, vocabPath);
        var merges = new List<(string, string)>();
        var lines = File.ReadAllLines(mergesPath);
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i];
            if (line.Length == 0 || (i == 0 && line.StartsWith("#version", StringComparison.Ordinal))) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2) throw new TokenizerException($"{mergesPath}:{i + 1}: expected two tokens separated by one space, got \"{line}\".");
            merges.Add((parts[0], parts[1]));
        }

        // transformers' GPT2Tokenizer: bos/eos/unk default to <|endoftext|>; no BOS is added unless add_bos_token is set.
        string? bos = cfg.Bos.Or("<|endoftext|>"), eos = cfg.Eos.Or("<|endoftext|>"), unk = cfg.Unk.Or("<|endoftext|>");
        var added = CollectAddedTokens(cfg, vocab, [bos, eos, unk, cfg.Pad.Or(null)]);
        var model = new MlByteLevelBpeModel(vocab, merges, unkToken: null, null, null, fuseUnk: false, ignoreMerges: false);
        var prefix = new List<int>();
        var suffix = new List<int>();
        int? Id(string? token) => token is null ? null : added.FirstOrDefault(t => t.Content == token)?.Id ?? (vocab.TryGetValue(token, out int v) ? v : null);
        if (cfg.AddBosToken == true && Id(bos) is int b) prefix.Add(b);
        if (cfg.AddEosToken == true && Id(eos) is int eosId) suffix.Add(eosId);

        return new Parts
        {
            Format = TokenizerFormat.VocabMerges,
            Directory = dir,
            Config = cfg,
            Model = model,
            Vocab = vocab,
            PreTokenizer = new ByteLevelPreTokenizer(cfg.AddPrefixSpace ?? false, useRegex: true),
            Decoder = new ByteLevelDecoder(),
            AddedTokens = added,
            ByteLevel = true,
            PrefixIds = prefix,
            SuffixIds = suffix,
            BosToken = bos,
            EosToken = eos,
        };
    }

    /// <summary>Added tokens of the slow-tokenizer formats: <c>added_tokens_decoder</c>, <c>added_tokens.json</c>, and the named special tokens.</summary>
    private static List<AddedToken> CollectAddedTokens(TokenizerConfigFiles cfg, Dictionary<string, int> vocab, IEnumerable<string?> specialTokens, IEnumerable<AddedToken>? fromModel = null)
    {
        var added = new List<AddedToken>(fromModel ?? []);
        added.AddRange(cfg.AddedTokensDecoder);
        var specials = specialTokens.Concat(cfg.AdditionalSpecialTokens).OfType<string>().ToHashSet(StringComparer.Ordinal);
        foreach (var (content, id) in cfg.AddedTokensJson)
            added.Add(new AddedToken(content, id, specials.Contains(content)));
        foreach (string s in specials)
        {
            if (added.Any(t => t.Content == s)) continue;
            if (vocab.TryGetValue(s, out int id)) added.Add(new AddedToken(s, id, Special: true));
        }
        return added;
    }

    private static Parts LoadSentencePiece(string dir, string path, TokenizerConfigFiles cfg)
    {
        var sp = SentencePieceModel.Read(path);
        if (sp.Kind != SentencePieceModel.ModelKind.Bpe)
            throw new TokenizerException($"{path}: SentencePiece model type {sp.Kind} is not supported. Tern implements SentencePiece BPE " +
                "(Llama, Mistral); Unigram models (T5, ALBERT, XLM-R, ...) are not.");

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < sp.Pieces.Count; i++) vocab.TryAdd(sp.Pieces[i].Piece, i);
        string? Piece(int id) => id >= 0 && id < sp.Pieces.Count ? sp.Pieces[id].Piece : null;

        // transformers 5 LlamaTokenizer: BPE(byte_fallback, fuse_unk) with merges derived from the scores, no normalizer,
        // Metaspace(prepend_scheme "first" unless legacy, split=false), decoder Replace ▁→" ", ByteFallback, Fuse, Strip(1).
        var merges = sp.GenerateMerges(vocab);
        var model = new RankedBpeModel(vocab, merges, byteLevel: false, Piece(sp.UnkId), fuseUnk: true, byteFallback: true, ignoreMerges: false, file: path);
        bool addPrefixSpace = cfg.AddPrefixSpace ?? sp.AddDummyPrefix;
        string scheme = !addPrefixSpace ? "never" : cfg.Legacy == true ? "always" : "first";
        var decoderSteps = new List<DecoderStep>
        {
            new ReplaceDecoder(JsonPattern.Literal("▁"), " "),
            new ByteFallbackDecoder(),
            new FuseDecoder(),
        };
        if (addPrefixSpace) decoderSteps.Add(new StripDecoder(' ', 1, 0));

        string? bos = cfg.Bos.Or(Piece(sp.BosId)), eos = cfg.Eos.Or(Piece(sp.EosId)), unk = cfg.Unk.Or(Piece(sp.UnkId));
        var fromModel = new List<AddedToken>();
        for (int i = 0; i < sp.Pieces.Count; i++)
        {
            var (piece, _, type) = sp.Pieces[i];
            if (type is SentencePieceModel.PieceType.Control or SentencePieceModel.PieceType.Unknown) fromModel.Add(new AddedToken(piece, i, Special: true));
            else if (type == SentencePieceModel.PieceType.UserDefined) fromModel.Add(new AddedToken(piece, i, Special: false));
        }
        var added = CollectAddedTokens(cfg, vocab, [bos, eos, unk, cfg.Pad.Or(null)], fromModel);

        var prefix = new List<int>();
        var suffix = new List<int>();
        if ((cfg.AddBosToken ?? true) && bos is not null && vocab.TryGetValue(bos, out int b)) prefix.Add(b);
        if ((cfg.AddEosToken ?? false) && eos is not null && vocab.TryGetValue(eos, out int e)) suffix.Add(e);

        return new Parts
        {
            Format = TokenizerFormat.SentencePiece,
            Directory = dir,
            Config = cfg,
            Model = model,
            Vocab = vocab,
            PreTokenizer = new MetaspacePreTokenizer("▁", scheme, split: false),
            Decoder = new SequenceDecoder(decoderSteps.ToArray()),
            AddedTokens = added,
            PrefixIds = prefix,
            SuffixIds = suffix,
            BosToken = bos,
            EosToken = eos,
        };
    }
}
