using static TorchSharp.torch;

namespace Tern.Caching;

/// <summary>Shape and placement of a <see cref="KvCache"/>.</summary>
public sealed record KvCacheOptions
{
    /// <summary>Sequences in the batch.</summary>
    public required int BatchSize { get; init; }
    /// <summary>Transformer layers.</summary>
    public required int Layers { get; init; }
    /// <summary>Key/value heads per layer.</summary>
    public required int KvHeads { get; init; }
    /// <summary>Dimension of one head.</summary>
    public required int HeadDim { get; init; }
    /// <summary>Slots per layer (see <see cref="IKvCachePolicy.Capacity"/>).</summary>
    public required int Capacity { get; init; }
    /// <summary>Storage type of keys and values (the model's dtype; also the type group-quantized entries read back as).</summary>
    public required ScalarType DType { get; init; }
    /// <summary>Bits per stored key/value element: 16 keeps <see cref="DType"/>; 8 or 4 store FlexGen group-quantized codes
    /// (groups of 64 along the head dimension), dequantized for attention.</summary>
    public int Bits { get; init; } = 16;
    /// <summary>Keys are stored before the rotary embedding and tokens positioned by their cache index
    /// (<see cref="KvCacheConfig.RollPositions"/>).</summary>
    public bool RollPositions { get; init; }
    /// <summary>Longest sequence the cache serves (what ratio budgets are ratios of); 0 means <see cref="Capacity"/>.</summary>
    public int MaxSequenceLength { get; init; }
    /// <summary>Where the cache lives.</summary>
    public required Device Device { get; init; }
    /// <summary>The per-sequence state of the model's recurrent layers (<see cref="RecurrentState"/>), when it has some; a
    /// purely recurrent model has no KV layers (<see cref="Layers"/> 0).</summary>
    public IReadOnlyList<RecurrentTensor>? Recurrent { get; init; }
}

/// <summary>
/// The per-sequence state of a whole model for one batch: a preallocated <see cref="LayerKvCache"/> per attention layer, the
/// policy that decides what stays, and the fixed-size state of recurrent layers (<see cref="Recurrent"/>) when the model has
/// some. Row operations (serving's moves, imports, emptying, resizing) apply to both, so whoever steps and pools rows treats
/// every model alike. Per-sequence token counts are tracked on the host.
/// </summary>
public sealed class KvCache : IDisposable
{
    readonly LayerKvCache[] layers;
    readonly int[] sequenceLengths;

    KvCache(KvCacheOptions options, IKvCachePolicy policy)
    {
        Options = options;
        Policy = policy;
        layers = Enumerable.Range(0, options.Layers).Select(l => new LayerKvCache(l, options, policy)).ToArray();
        Recurrent = options.Recurrent is { } layout ? new RecurrentState(layout, options.BatchSize, options.Device) : null;
        sequenceLengths = new int[options.BatchSize];
        activeRows = options.BatchSize;
    }

    /// <summary>Allocates a cache. <paramref name="policy"/> defaults to <see cref="DensePolicy"/>.</summary>
    public static KvCache Create(KvCacheOptions options, IKvCachePolicy? policy = null)
    {
        bool kvShape = options.Layers == 0 && options.Recurrent is not null || options.Layers >= 1 && options.KvHeads >= 1 && options.HeadDim >= 1 && options.Capacity >= 1;
        if (options.BatchSize < 1 || !kvShape)
            throw new ArgumentException($"invalid KV cache shape {options}");
        KvPolicyOptions.ValidateBits(options.Bits);
        return new KvCache(options, policy ?? DensePolicy.Instance);
    }

    /// <summary>The shape and placement.</summary>
    public KvCacheOptions Options { get; }

    /// <summary>Longest sequence the cache serves (<see cref="KvCacheOptions.MaxSequenceLength"/>, or the capacity).</summary>
    public int MaxSequenceLength => Options.MaxSequenceLength > 0 ? Options.MaxSequenceLength : Options.Capacity;

    /// <summary>The policy deciding what the cache keeps.</summary>
    public IKvCachePolicy Policy { get; }

    /// <summary>The cache of one layer.</summary>
    public LayerKvCache this[int layer] => layers[layer];

    /// <summary>Number of KV layers (0 for a purely recurrent model).</summary>
    public int LayerCount => layers.Length;

    /// <summary>The recurrent layers' per-sequence state; null when the model has none.</summary>
    public RecurrentState? Recurrent { get; }

    /// <summary>Tokens each sequence has passed through the model so far (padding excluded), whatever was evicted since.</summary>
    public IReadOnlyList<int> SequenceLengths => sequenceLengths;

    /// <summary>Records that each sequence passed <paramref name="tokens"/>[b] more real tokens through the model.</summary>
    public void Advance(IReadOnlyList<int> tokens)
    {
        for (int b = 0; b < tokens.Count; b++) sequenceLengths[b] += tokens[b];
    }

    /// <summary>
    /// Rows of the batch that forward steps run over: [0, ActiveRows) (all of <see cref="KvCacheOptions.BatchSize"/> by
    /// default). Serving keeps its live sequences in the first rows and steps only those; rows past it keep their slots.
    /// </summary>
    public int ActiveRows
    {
        get => activeRows;
        internal set
        {
            if (value < 0 || value > Options.BatchSize)
                throw new ArgumentOutOfRangeException(nameof(value), $"active rows must be in [0, {Options.BatchSize}] (got {value}).");
            foreach (var l in layers) l.Rows = value;
            if (Recurrent is not null) Recurrent.Rows = value;
            activeRows = value;
        }
    }
    int activeRows;

    /// <summary>Slots in use per layer (the same in every layer for the policies serving batches: see <see cref="LayerKvCache.Length"/>);
    /// 0 without KV layers.</summary>
    public int Length => layers.Length > 0 ? layers[0].Length : 0;

    /// <summary>Copies <paramref name="count"/> entries of rows [sourceRow, sourceRow + rows) of <paramref name="source"/>, from
    /// slot <paramref name="sourceStart"/>, into slots [0, count) of the empty rows [row, row + rows) in every layer
    /// (<see cref="LayerKvCache.ImportRows"/>).</summary>
    internal void ImportRows(int row, KvCache source, int sourceRow, int rows, int sourceStart, int count)
    {
        for (int l = 0; l < layers.Length; l++) layers[l].ImportRows(row, source.layers[l], sourceRow, rows, sourceStart, count);
        Recurrent?.ImportRows(row, source.Recurrent!, sourceRow, rows);
    }

    /// <summary>Copies every entry of the one-row cache <paramref name="source"/> (each layer its own [0, length), with their
    /// policy state, and the recurrent state) into each of the empty rows [row, row + rows): sequences that start from the
    /// same state, such as a soft prompt's prefilled entries.</summary>
    internal void ImportIntoRows(int row, int rows, KvCache source)
    {
        if (source.Options.BatchSize != 1) throw new ArgumentException("the source of a broadcast import holds one row.", nameof(source));
        for (int l = 0; l < layers.Length; l++) layers[l].ImportRows(row, source.layers[l], 0, rows, 0, source.layers[l].Length);
        Recurrent?.ImportRows(row, source.Recurrent!, 0, rows);
        for (int r = row; r < row + rows; r++) sequenceLengths[r] = source.sequenceLengths[0];
    }

    /// <summary>Moves row <paramref name="from"/> into row <paramref name="to"/> and empties <paramref name="from"/>, in every layer.</summary>
    internal void MoveRow(int from, int to)
    {
        foreach (var l in layers) l.MoveRow(from, to);
        Recurrent?.MoveRow(from, to);
    }

    /// <summary>Empties rows [row, row + rows) in every layer: their slots are free for compaction.</summary>
    internal void EmptyRows(int row, int rows)
    {
        foreach (var l in layers) l.EmptyRows(row, rows);
        Recurrent?.EmptyRows(row, rows);
    }

    /// <summary>Drops the empty slots of the rows in use, in every layer (<see cref="LayerKvCache.Compact"/>; with
    /// <paramref name="longestRow"/> known, no read-back from the device, which would wait for it once per layer).</summary>
    internal void Compact(int? longestRow = null)
    {
        if (ActiveRows == 0)
        {
            // Nothing to keep (an idle serving pool): back to a fresh cache's state, in place (a captured graph keeps its tensors).
            foreach (var l in layers) l.EmptyAll();
            Recurrent?.Clear();
            Array.Clear(sequenceLengths);
            return;
        }
        foreach (var l in layers) l.Compact(longestRow);
    }

    /// <summary>A cache with the same layers and policy for <paramref name="batchSize"/> rows of <paramref name="capacity"/> slots,
    /// holding this cache's rows in use and their entries (for a pool that grows and shrinks with its load).</summary>
    internal KvCache Resized(int batchSize, int capacity)
    {
        if (batchSize < ActiveRows || capacity < Length)
            throw new ArgumentException($"a resized cache must hold {ActiveRows} rows of {Length} slots (asked {batchSize} x {capacity}).");
        var resized = Create(Options with { BatchSize = batchSize, Capacity = capacity }, Policy);
        for (int l = 0; l < layers.Length; l++) resized.layers[l].CopyFrom(layers[l]);
        resized.Recurrent?.CopyFrom(Recurrent!);
        resized.ActiveRows = ActiveRows;
        return resized;
    }

    /// <summary>Entries held in every row, in use or not (a freed row must hold none), over every layer and KV head; reads
    /// the count back from the device.</summary>
    public long OccupiedEntries()
    {
        long total = 0;
        foreach (var l in layers) total += l.OccupiedEntries();
        return total;
    }

    /// <summary>Host bookkeeping for a step executed by a CUDA-graph replay (or, negative, captured without executing):
    /// every layer and every sequence advance by <paramref name="tokens"/>.</summary>
    internal void AdjustForReplay(int tokens)
    {
        foreach (var l in layers) l.AdjustLength(tokens);
        for (int b = 0; b < sequenceLengths.Length; b++) sequenceLengths[b] += tokens;
    }

    /// <summary>Every layer's host bookkeeping (<see cref="LayerKvCache.Bookkeeping"/>).</summary>
    internal (int Length, bool HasHoles, bool AttendedKeysStale)[] Bookkeeping
    {
        get => layers.Select(l => l.Bookkeeping).ToArray();
        set
        {
            for (int l = 0; l < layers.Length; l++) layers[l].Bookkeeping = value[l];
        }
    }

    /// <summary>True when some layer keeps keys rotated at their cache index that must all be rotated again
    /// (<see cref="LayerKvCache.AttendedKeysStale"/>): a captured step only rotates its own.</summary>
    internal bool AttendedKeysStale => layers.Any(l => l.KeysAtCacheIndex && l.AttendedKeysStale);

    /// <summary>
    /// Serving pools of a cache that only appends: each row's one-token steps write at the row's own next slot (its first free
    /// one: a pool's rows hold their entries at [0, count) without holes), not at one slot shared by every row, so rows that
    /// joined at different steps do not stretch the cache (a shared slot left a late joiner's entries spread over the pool's
    /// whole history). Every slot counts as in use (<see cref="FillToCapacity"/>); the pool knows each row's length and hands it
    /// to static-shape steps as the row's slot (an eager step finds the first free slot on the device).
    /// </summary>
    internal bool RowSlots
    {
        get => rowSlots;
        set
        {
            rowSlots = value;
            foreach (var l in layers) l.RowSlots = value;
        }
    }
    bool rowSlots;

    /// <summary>With <see cref="RowSlots"/>: every slot in use, so steps fill each row's free slots below the length.</summary>
    internal void FillToCapacity()
    {
        foreach (var l in layers) l.PadTo(l.Capacity);
    }

    /// <summary>With <see cref="RowSlots"/>: the slots in use back to <paramref name="length"/>, the longest row's entry count
    /// (known to the pool), before a resize copies them.</summary>
    internal void TrimTo(int length)
    {
        foreach (var l in layers) l.TrimTo(length);
    }

    /// <summary>Static-shape steps write every layer at one slot: after an eviction left layers of different lengths (per-layer
    /// H2O over uneven rows), each takes the longest's, its extra slots empty.</summary>
    internal void AlignLengths()
    {
        int longest = layers.Length == 0 ? 0 : layers.Max(l => l.Length);
        foreach (var l in layers) l.PadTo(longest);
    }

    /// <summary>Bytes held by keys and values, and by the recurrent state.</summary>
    public long Bytes => layers.Sum(l => l.Bytes) + (Recurrent?.Bytes ?? 0);

    /// <summary>Empties every layer.</summary>
    public void Clear()
    {
        foreach (var l in layers) l.Clear();
        Recurrent?.Clear();
        Array.Clear(sequenceLengths);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var l in layers) l.Dispose();
        Recurrent?.Dispose();
    }
}
