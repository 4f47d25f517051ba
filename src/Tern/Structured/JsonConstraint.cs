using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Tern.Generation;
using Tern.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Structured;

/// <summary>
/// Constrained decoding to JSON (OpenAI's <c>response_format</c> json_object and json_schema): before every token the
/// sampler masks the logits to the tokens whose bytes keep the text a prefix of a document the schema accepts
/// (<see cref="JsonGrammar"/>), and allows the stop tokens only once the document is complete. Masks are computed by walking
/// the tokenizer's <see cref="TokenTrie"/> with the automaton (pruned at the first refused byte, not a scan of the
/// vocabulary) and cached by automaton state, with the device tensor, so a state met again costs a lookup. Near the end of its
/// token budget a sequence is allowed only tokens after which the document can still be completed in the tokens left (one
/// byte per token at worst), so a reply cut by max_tokens is still valid JSON wherever the vocabulary spells every byte;
/// otherwise the cut reply ends with the finish reason "length".
/// </summary>
public sealed class JsonConstraint : ITokenConstraint
{
    readonly SchemaNode root;
    readonly TokenTrie trie;
    readonly Dictionary<State, Entry> entries = new();
    readonly Dictionary<(Entry, int Budget, string Stops, string Device), Tensor> tensors = new();
    readonly object gate = new();
    long hits, misses, maskTicks;

    /// <summary>Masks cached at most (beyond, masks are built per step).</summary>
    const int MaxCachedMasks = 8192;

    JsonConstraint(SchemaNode root, TernTokenizer tokenizer)
    {
        this.root = root;
        trie = TokenTrie.For(tokenizer);
    }

    static readonly ConditionalWeakTable<TernTokenizer, ConcurrentDictionary<string, JsonConstraint>> BySchema = new();

    /// <summary>A JSON object of any content (json_object).</summary>
    public static JsonConstraint Object(TernTokenizer tokenizer) => Cached(tokenizer, "", () => SchemaNode.AnyObject);

    /// <summary>A document valid under <paramref name="schema"/> (json_schema). Throws <see cref="UnsupportedSchemaException"/>
    /// naming a keyword outside the supported subset. With <paramref name="shareMasks"/> constraints are kept per tokenizer and
    /// schema text, so requests with the same schema share masks; without, the constraint is new (its cache starts empty).</summary>
    public static JsonConstraint ForSchema(JsonElement schema, TernTokenizer tokenizer, bool shareMasks = true) => shareMasks
        ? Cached(tokenizer, schema.GetRawText(), () => JsonSchemaCompiler.Compile(schema))
        : new JsonConstraint(JsonSchemaCompiler.Compile(schema), tokenizer);

    static JsonConstraint Cached(TernTokenizer tokenizer, string key, Func<SchemaNode> compile)
    {
        var known = BySchema.GetValue(tokenizer, _ => new ConcurrentDictionary<string, JsonConstraint>());
        if (known.TryGetValue(key, out var constraint)) return constraint;
        if (known.Count >= 64) known.Clear(); // many distinct schemas: keep the recent ones only
        return known[key] = new JsonConstraint(compile(), tokenizer);
    }

    /// <summary>The fewest bytes of a document the constraint accepts: with at least this many tokens (max_tokens) a reply
    /// always completes its document (one byte per token at worst, when the vocabulary spells every byte alone).</summary>
    public int MinDocumentBytes => root.MinLength;

    /// <summary>Mask look-ups answered from the cache and computed, so far.</summary>
    public (long Hits, long Misses) CacheStats
    {
        get { lock (gate) return (hits, misses); }
    }

    /// <summary>Host time spent so far finding masks and advancing sequences' states (what the constraint adds per step besides
    /// the masked fill on the device).</summary>
    public TimeSpan MaskTime => Stopwatch.GetElapsedTime(0, Interlocked.Read(ref maskTicks));

    /// <inheritdoc />
    public ITokenMask Start(IReadOnlyCollection<int> stopIds, int vocab)
    {
        if (stopIds.Count == 0)
            throw new ArgumentException("a JSON response format needs an end-of-sequence token to end the document: this model has none (or ignore_eos is set).");
        return new Mask(this, stopIds.Order().ToArray(), vocab);
    }

    /// <summary>A set of automaton stacks: the cache key.</summary>
    sealed class State(List<Stack> stacks) : IEquatable<State>
    {
        readonly int hash = stacks.Aggregate(stacks.Count, (h, s) => HashCode.Combine(h, s.GetHashCode()));
        public List<Stack> Stacks { get; } = stacks;
        public bool Equals(State? other) => other is not null && hash == other.hash && Stacks.SequenceEqual(other.Stacks);
        public override bool Equals(object? obj) => obj is State s && Equals(s);
        public override int GetHashCode() => hash;
    }

    /// <summary>What a state allows: each token and the fewest bytes that complete the document after it.</summary>
    sealed class Entry(int[] tokens, int[] distances, bool canEnd)
    {
        public int[] Tokens { get; } = tokens;
        public int[] Distances { get; } = distances;
        public int MaxDistance { get; } = distances.DefaultIfEmpty(0).Max();
        public bool CanEnd { get; } = canEnd;
    }

    Entry EntryFor(State state)
    {
        if (entries.TryGetValue(state, out var entry))
        {
            hits++;
            return entry;
        }
        misses++;
        var tokens = new List<int>();
        var distances = new List<int>();
        Walk(trie.Root, state.Stacks, Distance(state.Stacks), tokens, distances);
        return entries[state] = new Entry(tokens.ToArray(), distances.ToArray(), state.Stacks.Any(JsonGrammar.CanEnd));
    }

    /// <summary>Depth-first over the trie, advancing the automaton one byte per edge; a dead state prunes the subtree. A byte
    /// that leaves the state as it was keeps its distance (<paramref name="distance"/> is that of <paramref name="states"/>).</summary>
    static void Walk(TokenTrie.Node node, List<Stack> states, int distance, List<int> tokens, List<int> distances)
    {
        for (int i = 0; i < node.Bytes.Length; i++)
        {
            var next = JsonGrammar.Advance(states, node.Bytes[i]);
            if (next.Count == 0) continue;
            int after = ReferenceEquals(next, states) ? distance : Distance(next);
            var child = node.Children[i];
            foreach (int t in child.Tokens)
            {
                tokens.Add(t);
                distances.Add(after);
            }
            Walk(child, next, after, tokens, distances);
        }
    }

    static int Distance(List<Stack> stacks)
    {
        int best = int.MaxValue;
        foreach (var s in stacks) best = Math.Min(best, JsonGrammar.Distance(s));
        return best;
    }

    /// <summary>The allowed tokens of <paramref name="state"/> as bool [vocab] on <paramref name="device"/>, for a sequence
    /// with <paramref name="left"/> tokens left (this one included).</summary>
    Tensor? Allowed(State state, int[] stops, int vocab, Device device, int left)
    {
        long started = Stopwatch.GetTimestamp();
        try
        {
            return AllowedUntimed(state, stops, vocab, device, left);
        }
        finally
        {
            Interlocked.Add(ref maskTicks, Stopwatch.GetTimestamp() - started);
        }
    }

    Tensor? AllowedUntimed(State state, int[] stops, int vocab, Device device, int left)
    {
        lock (gate)
        {
            var entry = EntryFor(state);
            int budget = entry.MaxDistance <= left - 1 ? int.MaxValue : left - 1;
            var key = (entry, budget, entry.CanEnd ? string.Join(",", stops) : "", $"{device}:{vocab}");
            if (tensors.TryGetValue(key, out var cached)) return cached;
            var ids = new List<long>(entry.Tokens.Length + stops.Length);
            for (int i = 0; i < entry.Tokens.Length; i++)
                if (entry.Distances[i] <= budget && entry.Tokens[i] < vocab) ids.Add(entry.Tokens[i]);
            // Nothing completes the document in time: it ends now if it can, else goes on and ends by length.
            if (ids.Count == 0 && !entry.CanEnd) ids.AddRange(entry.Tokens.Where(t => t < vocab).Select(t => (long)t));
            if (entry.CanEnd) ids.AddRange(stops.Where(t => t < vocab).Select(t => (long)t));
            if (ids.Count == 0) return null; // a state that allows nothing (not reached from a valid start): leave it free
            var mask = torch.zeros(vocab, ScalarType.Bool, device);
            using (var index = torch.tensor(ids.ToArray()).to(device)) mask.index_fill_(0, index, true);
            if (tensors.Count < MaxCachedMasks) tensors[key] = mask.DetachFromDisposeScope();
            return mask; // uncached: the caller's dispose scope frees it
        }
    }

    /// <summary>One sequence's automaton state.</summary>
    sealed class Mask(JsonConstraint owner, int[] stops, int vocab) : ITokenMask
    {
        State? state = new(new List<Stack> { JsonGrammar.Start(owner.root) }); // null once the document has ended

        public Tensor? Allowed(Device device, int tokensLeft) => state is null ? null : owner.Allowed(state, stops, vocab, device, tokensLeft);

        public void Accept(int token)
        {
            if (state is null) return;
            if (Array.BinarySearch(stops, token) >= 0 || owner.trie.Bytes(token) is not { } bytes)
            {
                state = null; // a stop token ends the document (the mask allowed it only when complete)
                return;
            }
            long started = Stopwatch.GetTimestamp();
            var stacks = state.Stacks;
            foreach (byte b in bytes)
                if ((stacks = JsonGrammar.Advance(stacks, b)).Count == 0) break;
            state = stacks.Count == 0 ? null : new State(stacks);
            Interlocked.Add(ref owner.maskTicks, Stopwatch.GetTimestamp() - started);
        }
    }
}
