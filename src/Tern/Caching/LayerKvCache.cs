using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Caching;

/// <summary>
/// One layer's keys and values, preallocated as [batch, kvHeads, capacity, headDim] (in the model's dtype, or group-quantized
/// when <see cref="KvCacheOptions.Bits"/> is 8 or 4), with the original token position of every entry in
/// [batch, kvHeads, capacity] (-1 marks an empty slot: padding or never written). Slots [0, Length) are in use; entries are
/// appended at Length and evicted per head by <see cref="Keep"/>, which compacts the survivors to the front (or, for a kept
/// prefix and suffix in rows without holes, by <see cref="KeepPrefixAndSuffix"/>, which moves the suffix down).
/// </summary>
public sealed class LayerKvCache : IDisposable
{
    readonly KvStore keys, values;
    Tensor? entryState;

    internal LayerKvCache(int layer, KvCacheOptions options, IKvCachePolicy policy)
    {
        Layer = layer;
        Policy = policy;
        headDim = options.HeadDim;
        Capacity = options.Capacity;
        MaxSequenceLength = options.MaxSequenceLength > 0 ? options.MaxSequenceLength : options.Capacity;
        Bits = options.Bits;
        KeysAtCacheIndex = options.RollPositions;
        DType = options.DType;
        keys = KvStore.Create(options);
        values = KvStore.Create(options);
        // The cache is disposed by its owner, not by whatever dispose scope is open when it is created.
        positions = torch.full(new long[] { options.BatchSize, options.KvHeads, options.Capacity }, -1L, ScalarType.Int64, options.Device)
            .DetachFromDisposeScope();
    }

    /// <summary>The policy deciding what this layer keeps; the cache runs it (<see cref="Update"/>, <see cref="Observe"/>,
    /// <see cref="EndStep"/>), so the layers that attend through the cache know no policy.</summary>
    public IKvCachePolicy Policy { get; }

    /// <summary>True when keys are stored before the rotary embedding and attended at their cache index
    /// (StreamingLLM's position rolling, <see cref="KvCacheOptions.RollPositions"/>).</summary>
    public bool KeysAtCacheIndex { get; }

    /// <summary>True when the policy wants this layer's attention probabilities (<see cref="Observe"/>).</summary>
    public bool ObservesAttention => Policy is IAttentionObserver;

    /// <summary>
    /// A layer's one hand-over of a step's new keys and values [batch, kvHeads, tokens, headDim] at
    /// <paramref name="positions"/> [batch, tokens] (-1 for padding): the policy makes room, then they are appended
    /// (at the device-held <paramref name="slots"/> in static-shape mode: int64 [tokens], or with <see cref="RowSlots"/> each
    /// row's own, [batch]). Attention then reads the cache.
    /// </summary>
    public void Update(Tensor keys, Tensor values, Tensor positions, bool hasPadding, Tensor? slots = null)
    {
        int tokens = (int)keys.size(2);
        Policy.BeforeAppend(this, tokens);
        if (RowSlots && slots is not null && tokens == 1) AppendAtRowSlots(keys, values, positions, slots);
        else if (FillsFreeSlots(tokens)) AppendIntoFreeSlots(keys, values, positions);
        else Append(keys, values, positions, hasPadding, slots);
    }

    /// <summary>True when a step of <paramref name="tokens"/> writes each row's and head's entry into its first free slot below
    /// the length, which stays: the policy's steady state (<see cref="IKvCachePolicy.FillsFreeSlots"/>) or a serving pool's
    /// own slot per row (<see cref="RowSlots"/> with every slot in use).</summary>
    internal bool FillsFreeSlots(int tokens) =>
        Policy.FillsFreeSlots(this, tokens) || RowSlots && tokens == 1 && Length == Capacity && Policy.AppendOnly;

    /// <summary>See <see cref="KvCache.RowSlots"/>.</summary>
    internal bool RowSlots { get; set; }

    /// <summary>Slots in use back to <paramref name="length"/>; every slot past it must be free (the caller knows).</summary>
    internal void TrimTo(int length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length), $"{Length} slots in use cannot become {length}.");
        Length = length;
    }

    /// <summary>Hands the policy one block of the step's attention probabilities [batch, heads, queries, Length] (fp32; only
    /// when <see cref="ObservesAttention"/>).</summary>
    public void Observe(Tensor probabilities) => ((IAttentionObserver)Policy).ObserveAttention(this, probabilities);

    /// <summary>The layer's attention for the step is done: the policy may evict now.</summary>
    public void EndStep() => Policy.AfterStep(this);

    /// <summary>
    /// Keys as attention reads them when they are stored unrotated (StreamingLLM: each rotated to its index among its row's
    /// occupied slots), kept by attention across steps: appending never changes an earlier entry's index, so a step rotates
    /// only its own keys. Whatever moves entries (eviction, row moves and imports, restores, clearing) marks it stale and the
    /// next step rotates every slot again, into the same tensor (a captured graph keeps writing there) — except a shift
    /// (<see cref="KeepPrefixAndSuffix"/>), whose moved block attention rotates again in the step that evicted.
    /// </summary>
    internal Tensor AttendedKeys()
    {
        attendedKeys ??= torch.zeros(new[] { positions.size(0), positions.size(1), Capacity, (long)headDim }, DType, Device).DetachFromDisposeScope();
        return Rows == attendedKeys.size(0) ? attendedKeys : attendedKeys.narrow(0, 0, Rows);
    }
    Tensor? attendedKeys;
    readonly int headDim;

    /// <summary>True when <see cref="AttendedKeys"/> must be rotated again from the stored keys.</summary>
    internal bool AttendedKeysStale { get; set; } = true;

    /// <summary>The block of slots [Start, Start + Count) that <see cref="KeepPrefixAndSuffix"/> moved down since attention last
    /// took it (<see cref="TakeMovedKeys"/>): its <see cref="AttendedKeys"/> still hold the keys rotated at their old index.</summary>
    (int Start, int Count)? movedKeys;

    /// <summary>The block whose keys a shift moved (see <see cref="KeepPrefixAndSuffix"/>), to be rotated at its new cache index
    /// from the stored keys; null when none moved or every slot is stale anyway. Taking it clears it.</summary>
    internal (int Start, int Count)? TakeMovedKeys()
    {
        var moved = AttendedKeysStale ? null : movedKeys;
        movedKeys = null;
        return moved;
    }

    /// <summary>Stored keys of slots [start, start + count), [batch, kvHeads, count, headDim] (a view with 16 bits, a
    /// dequantized copy otherwise).</summary>
    internal Tensor StoredKeys(int start, int count) => keys.Read(start, count);

    /// <summary>Where keys, values and positions live.</summary>
    public Device Device => Positions.device;

    /// <summary>Index of the layer.</summary>
    public int Layer { get; }

    /// <summary>Slots preallocated.</summary>
    public int Capacity { get; }

    /// <summary>Longest sequence the cache was created for (<see cref="KvCacheOptions.MaxSequenceLength"/>): what a budget
    /// given as a ratio is a ratio of.</summary>
    public int MaxSequenceLength { get; }

    /// <summary>Bits per stored key/value element: 16 = the model's dtype, 8 or 4 = group-quantized.</summary>
    public int Bits { get; }

    /// <summary>The type keys and values are read back in (the model's, or autocast's in training).</summary>
    public ScalarType DType { get; }

    /// <summary>
    /// The first slots a static-shape step of <paramref name="tokens"/> tokens attends over: every slot an evicting policy can
    /// hold once such a step appended (<see cref="IKvCachePolicy.Capacity"/> for that step), the whole capacity otherwise.
    /// A cache sized for a longer step (a prompt's prefill: sink 4,096 + 64 with a 4,096-token prompt has 8,192 slots) would
    /// else have every decode step's graph attend over slots its policy never fills.
    /// </summary>
    internal int StaticStepSlots(int tokens)
    {
        int slots = Policy.AppendOnly || RowSlots ? Capacity : Math.Min(Capacity, Policy.Capacity(MaxSequenceLength, tokens));
        if (Length > slots)
            throw new InvalidOperationException($"KV cache of layer {Layer}: {Length} slots in use exceed the {slots} its {Policy.Name} policy holds at a step of {tokens} tokens.");
        return slots;
    }

    /// <summary>Slots in use: every entry lives in [0, Length).</summary>
    public int Length { get; private set; }

    /// <summary>True when some slot below <see cref="Length"/> is empty (padding or uneven eviction), so attention needs a mask.</summary>
    public bool HasHoles { get; private set; }

    /// <summary>Key storage [batch, kvHeads, capacity, headDim], stored after rotary embedding (before it when the cache
    /// positions keys by their cache index, <see cref="KeysAtCacheIndex"/>). With 16 bits this is the
    /// storage itself; with 8 or 4 bits a dequantized copy.</summary>
    public Tensor Keys => keys.Read(Capacity);

    /// <summary>Value storage [batch, kvHeads, capacity, headDim] (the storage itself with 16 bits, a dequantized copy otherwise).</summary>
    public Tensor Values => values.Read(Capacity);

    /// <summary>Original token position of each slot [batch, kvHeads, capacity], -1 when empty (rows in use only: see
    /// <see cref="KvCache.ActiveRows"/>).</summary>
    public Tensor Positions => Rows == positions.size(0) ? positions : positions.narrow(0, 0, Rows);
    readonly Tensor positions;

    /// <summary>Rows of the batch that steps run over: [0, Rows) (<see cref="KvCache.ActiveRows"/>).</summary>
    public int Rows
    {
        get => keys.Rows;
        internal set => keys.Rows = values.Rows = value;
    }

    /// <summary>Keys in use, [batch, kvHeads, Length, headDim] (a view with 16 bits, a dequantized copy otherwise).</summary>
    public Tensor ActiveKeys => keys.Read(Length);

    /// <summary>Values in use (a view with 16 bits, a dequantized copy otherwise).</summary>
    public Tensor ActiveValues => values.Read(Length);

    /// <summary>Positions of the slots in use, [batch, kvHeads, Length] (a view).</summary>
    public Tensor ActivePositions => Positions.narrow(2, 0, Length);

    /// <summary>
    /// Per-entry state a policy keeps for this layer (H2O's accumulated attention): fp32 [batch, kvHeads, Capacity,
    /// <paramref name="width"/>], made at the first call. The cache owns it, so one policy object serves any number of caches:
    /// <see cref="Keep"/> compacts it with the entries, row moves carry it, free slots hold zeros, <see cref="Clear"/> drops it.
    /// </summary>
    public Tensor EntryState(int width)
    {
        if (entryState is null)
            entryState = torch.zeros(new[] { positions.size(0), positions.size(1), Capacity, (long)width }, ScalarType.Float32, Device)
                .DetachFromDisposeScope();
        else if (entryState.size(3) != width)
            throw new InvalidOperationException($"KV cache of layer {Layer}: entry state of width {entryState.size(3)} asked as {width}.");
        return Rows == entryState.size(0) ? entryState : entryState.narrow(0, 0, Rows);
    }

    /// <summary>
    /// Appends keys and values [batch, kvHeads, tokens, headDim] with their positions [batch, tokens] (-1 for padding).
    /// <paramref name="hasPadding"/> says whether any position is -1 (known on the host, so no device sync is needed).
    /// </summary>
    /// <param name="slots">When given (static-shape mode, 16 bits only), the slots, int64 [tokens] on the device, to write to;
    /// they must equal [Length, Length + tokens) at execution time.</param>
    public void Append(Tensor keys, Tensor values, Tensor positions, bool hasPadding, Tensor? slots = null)
    {
        int tokens = (int)keys.size(2);
        if (Length + tokens > Capacity)
            throw new InvalidOperationException($"KV cache of layer {Layer}: {Length} + {tokens} entries exceed its {Capacity} slots.");
        if (slots is null)
        {
            // A decode step on the CPU: one kernel writes keys, values and positions (three copies cost ~18 µs a layer there).
            bool fused = tokens == 1 && this.keys is DenseKvStore && this.values is DenseKvStore
                && Interop.FusedKernels.TryCacheAppendAt(Keys, Values, Positions, keys, values, positions, Length);
            if (!fused)
            {
                this.keys.Write(Length, keys);
                this.values.Write(Length, values);
                Positions.narrow(2, Length, tokens).copy_(positions.unsqueeze(1));
            }
        }
        else
        {
            if (this.keys is not DenseKvStore k || this.values is not DenseKvStore v)
                throw new InvalidOperationException("static-shape steps (CUDA graphs) need a 16-bit KV cache.");
            if (Rows != positions.size(0))
                throw new InvalidOperationException("static-shape steps (CUDA graphs) write every row of the cache; it has rows out of use.");
            if (!Interop.FusedKernels.TryCacheAppend(k.Storage, v.Storage, Positions, keys, values, positions, slots))
            {
                k.Storage.index_copy_(2, slots, keys);
                v.Storage.index_copy_(2, slots, values);
                Positions.index_copy_(2, slots, positions.unsqueeze(1).expand(Positions.size(0), Positions.size(1), tokens));
            }
        }
        Length += tokens;
        HasHoles |= hasPadding;
    }

    /// <summary>
    /// Writes one entry per row and head [batch, kvHeads, 1, headDim] at position [batch, 1] into the first free slot of that
    /// row and head, below <see cref="Length"/> (<see cref="FillsFreeSlots"/>: the one the policy freed, or a pool row's next),
    /// so the length stays. Static shapes: the slots are found on the device.
    /// </summary>
    void AppendIntoFreeSlots(Tensor keys, Tensor values, Tensor positions)
    {
        using var scope = torch.NewDisposeScope();
        WriteAt(ActivePositions.lt(0).to(ScalarType.Int32).argmax(-1, keepdim: true), keys, values, positions); // [B,Hkv,1]: the first maximum
    }

    /// <summary>
    /// Writes one entry per row [batch, kvHeads, 1, headDim] at position [batch, 1] into that row's slot, int64
    /// <paramref name="slots"/> [batch] on the device (<see cref="RowSlots"/>: the pool knows each row's next free slot, so
    /// nothing searches for it); the length stays.
    /// </summary>
    void AppendAtRowSlots(Tensor keys, Tensor values, Tensor positions, Tensor slots)
    {
        bool fused = this.keys is DenseKvStore k && this.values is DenseKvStore v && Rows == k.Storage.size(0)
            && Interop.FusedKernels.TryCacheAppend(k.Storage, v.Storage, Positions, keys, values, positions, slots);
        if (fused)
        {
            HasHoles = true;
            AttendedKeysStale = true;
            Rewrites++;
            return;
        }
        using var scope = torch.NewDisposeScope();
        WriteAt(slots.view(-1, 1, 1).expand(Rows, keys.size(1), 1), keys, values, positions);
    }

    /// <summary>Writes one entry per row and head [batch, kvHeads, 1, headDim] at position [batch, 1] into slot
    /// <paramref name="at"/> [batch, kvHeads, 1] of each, below the length (which stays).</summary>
    void WriteAt(Tensor at, Tensor keys, Tensor values, Tensor positions)
    {
        this.keys.WriteAt(at, keys);
        this.values.WriteAt(at, values);
        Positions.scatter_(2, at, positions.unsqueeze(1).expand_as(at));
        HasHoles = true;
        AttendedKeysStale = true;
        Rewrites++;
    }

    /// <summary>Empties slot <paramref name="slots"/> [batch, kvHeads, 1] of each row and head where <paramref name="where"/>
    /// [batch, kvHeads, 1] holds (an eviction in place: the length stays, the next entry of that row and head goes there); its
    /// policy state is zeroed.</summary>
    public void EmptySlots(Tensor slots, Tensor where)
    {
        using var scope = torch.NewDisposeScope();
        var positions = ActivePositions;
        positions.scatter_(2, slots, positions.gather(2, slots).masked_fill(where, -1));
        if (entryState is not null)
        {
            var state = EntryState((int)entryState.size(3)).narrow(2, 0, Length);
            var index = slots.unsqueeze(-1).expand(slots.size(0), slots.size(1), 1, state.size(3));
            state.scatter_(2, index, state.gather(2, index).masked_fill(where.unsqueeze(-1), 0));
        }
        HasHoles = true;
        AttendedKeysStale = true;
        Rewrites++;
    }

    /// <summary>Offloading: the storage tensors of keys then values, each [batch, kvHeads, capacity, ...] (see <c>KvStore.Parts</c>).</summary>
    internal IReadOnlyList<Tensor> StorageParts => keys.Parts.Concat(values.Parts).ToArray();

    /// <summary>Offloading: makes this layer a copy of <paramref name="source"/>, a layer of the same shape, policy and storage
    /// on another device (a host-memory home and the compute device's working layer, in either direction): its entries, every
    /// slot's position and policy state, and the bookkeeping. With <paramref name="unchangedSlots"/> &gt; 0 the two already
    /// hold the same entries there (the source only appended since it was a copy of this layer), and only the rest travels.</summary>
    internal void CopyEntriesFrom(LayerKvCache source, int unchangedSlots = 0)
    {
        if (source.Capacity != Capacity || source.positions.size(0) != positions.size(0) || unchangedSlots > source.Length)
            throw new ArgumentException($"KV cache of layer {Layer}: {source.positions.size(0)} x {source.Capacity} slots ({source.Length} in use) " +
                $"cannot be copied into {positions.size(0)} x {Capacity} keeping {unchangedSlots}.");
        using var scope = torch.NewDisposeScope();
        var (from, to) = (source.StorageParts, StorageParts);
        int added = source.Length - unchangedSlots;
        for (int p = 0; p < to.Count; p++)
        {
            // Whole tensors, or the new slots gathered on the source's side first: a slot range is strided, and a strided host
            // side goes through a pageable staging copy and a CPU gather (seconds per step at 30B).
            if (unchangedSlots == 0) to[p].copy_(from[p]);
            else if (added > 0) to[p].narrow(2, unchangedSlots, added).copy_(from[p].narrow(2, unchangedSlots, added).contiguous());
        }
        positions.copy_(source.positions);
        if (source.entryState is not null) AllRowsEntryState((int)source.entryState.size(3)).copy_(source.entryState);
        else entryState?.zero_();
        Length = source.Length;
        HasHoles = source.HasHoles;
        AttendedKeysStale = true;
    }

    /// <summary>Times entries changed other than by appending at the end (compaction by <see cref="Keep"/>, eviction and
    /// writes in place): offloading copies a layer back whole only when it changed.</summary>
    internal int Rewrites { get; private set; }

    /// <summary>Offloading: keys, values and positions of slots [0, <paramref name="length"/>) were just copied in from their
    /// home tiers; the bookkeeping follows.</summary>
    internal void Restore(int length, bool hasHoles)
    {
        if (length < 0 || length > Capacity) throw new ArgumentOutOfRangeException(nameof(length), $"{length} entries in {Capacity} slots.");
        Length = length;
        HasHoles = hasHoles;
        AttendedKeysStale = true;
    }

    /// <summary>Extends the slots in use to <paramref name="length"/> (the new ones empty: positions -1, as every free slot).</summary>
    internal void PadTo(int length)
    {
        if (length == Length) return;
        if (length < Length || length > Capacity) throw new ArgumentOutOfRangeException(nameof(length), $"{Length} slots in use cannot become {length} of {Capacity}.");
        Length = length;
        HasHoles = true;
    }

    /// <summary>The host's bookkeeping of the layer (a CUDA graph replayed for a step records what the captured step left).</summary>
    internal (int Length, bool HasHoles, bool AttendedKeysStale) Bookkeeping
    {
        get => (Length, HasHoles, AttendedKeysStale);
        set => (Length, HasHoles, AttendedKeysStale) = value;
    }

    /// <summary>Host bookkeeping only: records that a replayed step appended <paramref name="tokens"/> entries
    /// (or, negative, takes back the count of a captured step that did not execute).</summary>
    internal void AdjustLength(int tokens)
    {
        if (!FillsFreeSlots(Math.Abs(tokens))) Length += tokens; // a step into free slots kept the length
    }

    /// <summary>
    /// Evicts every entry whose <paramref name="keep"/> flag [batch, kvHeads, Length] is false; survivors keep their
    /// values, positions and relative order, and move to the front. <paramref name="keptPerRow"/>, when given, bounds the
    /// entries any row keeps (known on the host: no read-back, which would stall the device once per layer) and becomes the
    /// new length; a row keeps fewer only if it held empty slots, so the layer has holes after exactly when it had before.
    /// Without it the largest count is read back from the device and the layer is taken to have holes.
    /// </summary>
    /// <remarks>The <see cref="EntryState"/> is compacted the same way; its slots past the new length are zeroed, ready for the
    /// entries appended next.</remarks>
    public void Keep(Tensor keep, int? keptPerRow = null)
    {
        if (Length == 0) return;
        using var scope = torch.NewDisposeScope();
        keep = keep & ActivePositions.ge(0);
        int newLength = keptPerRow ?? (int)keep.sum(-1).max().item<long>();
        // Stable compaction: kept slots first, in slot order.
        var slot = torch.arange(Length, ScalarType.Int64, keep.device).expand_as(keep);
        var order = torch.where(keep, slot, slot + Length).argsort(-1).narrow(-1, 0, newLength);
        var keptFlags = keep.gather(-1, order);
        var positions = torch.where(keptFlags, ActivePositions.gather(-1, order), torch.tensor(-1L, device: keep.device));
        keys.Compact(order);
        values.Compact(order);
        Positions.narrow(2, 0, newLength).copy_(positions);
        if (Length > newLength) Positions.narrow(2, newLength, Length - newLength).fill_(-1);
        if (entryState is not null)
        {
            var state = EntryState((int)entryState.size(3));
            KvStore.CompactTensor(state, order);
            if (Length > newLength) state.narrow(2, newLength, Length - newLength).zero_();
        }
        if (keptPerRow is null) HasHoles = true;
        Length = newLength;
        AttendedKeysStale = true;
        Rewrites++;
    }

    /// <summary>
    /// Keeps, in every row and head, slots [0, <paramref name="prefix"/>) and the last <paramref name="suffix"/> slots in use,
    /// and evicts those between: StreamingLLM's rolling cache with attention sinks (the first S entries and the W most recent)
    /// when every row holds its entries in order at [0, <see cref="Length"/>). The kept suffix moves down to slot
    /// <paramref name="prefix"/> as one block per tensor — keys, values, positions, <see cref="EntryState"/> — with no sort and
    /// no index (<see cref="Keep"/> sorts and gathers every slot); the length becomes prefix + suffix.
    /// </summary>
    /// <remarks>Only for a layer without holes (<see cref="HasHoles"/> false): there slot order is entry order in every row, so
    /// this keeps exactly what <see cref="Keep"/> keeps for the first-and-last rule, in the same slots. With keys at their
    /// cache index the moved block's index drops by the evicted count; the sinks' stays. Attention rotates the moved block
    /// again right after the step's eviction (<see cref="TakeMovedKeys"/>; the cache knows no rotary embedding), so the next
    /// step rotates only its own key, as after an append.</remarks>
    public void KeepPrefixAndSuffix(int prefix, int suffix)
    {
        if (HasHoles) throw new InvalidOperationException($"KV cache of layer {Layer}: keeping a prefix and a suffix by a shift needs rows without holes.");
        if (prefix < 0 || suffix < 0) throw new ArgumentOutOfRangeException(nameof(prefix), $"prefix {prefix} and suffix {suffix} must be >= 0.");
        int evicted = Length - prefix - suffix;
        if (evicted <= 0) return;
        int from = Length - suffix;
        keys.Shift(from, prefix, suffix);
        values.Shift(from, prefix, suffix);
        using (var scope = torch.NewDisposeScope())
        {
            KvStore.ShiftTensor(Positions, from, prefix, suffix);
            Positions.narrow(2, prefix + suffix, evicted).fill_(-1);
            if (entryState is not null)
            {
                var state = EntryState((int)entryState.size(3));
                KvStore.ShiftTensor(state, from, prefix, suffix);
                state.narrow(2, prefix + suffix, evicted).zero_(); // free slots hold zeros
            }
        }
        Length = prefix + suffix;
        Rewrites++;
        if (!KeysAtCacheIndex || AttendedKeysStale) return;
        if (movedKeys is null) movedKeys = (prefix, suffix);
        else AttendedKeysStale = true; // a second shift before attention rotated the first: rotate every slot instead
    }

    /// <summary>Drops the empty slots of the rows in use: each row's entries move to its front, in order, and
    /// <see cref="Length"/> becomes the largest row's entry count — <paramref name="longestRow"/> when the caller knows it
    /// (no read-back from the device).</summary>
    internal void Compact(int? longestRow = null)
    {
        using var occupied = ActivePositions.ge(0);
        Keep(occupied, longestRow);
    }

    /// <summary>The entry state over every row, in use or not (made zero at the first call).</summary>
    Tensor AllRowsEntryState(int width)
    {
        EntryState(width);
        return entryState!;
    }

    /// <summary>Copies <paramref name="count"/> entries of <paramref name="source"/>'s rows [sourceRow, sourceRow + rows), from
    /// their slot <paramref name="sourceStart"/>, into slots [0, count) of this layer's empty rows [row, row + rows), growing
    /// <see cref="Length"/> to <paramref name="count"/> when shorter (the other rows get empty slots there). Serving uses it to
    /// move prefilled sequences into a running batch (a block of rows in one copy per tensor). Both caches have the same storage
    /// layout; the entries' policy state comes along. A one-row source fills every row (a soft prompt's entries starting each).</summary>
    internal void ImportRows(int row, LayerKvCache source, int sourceRow, int rows, int sourceStart, int count)
    {
        if (count > Capacity) throw new InvalidOperationException($"KV cache of layer {Layer}: {count} entries exceed its {Capacity} slots.");
        keys.CopyRows(source.keys, sourceRow, sourceStart, row, 0, count, rows);
        values.CopyRows(source.values, sourceRow, sourceStart, row, 0, count, rows);
        int sourceRows = source.positions.size(0) == 1 ? 1 : rows;
        using (var target = positions.narrow(0, row, rows).narrow(2, 0, count))
        using (var from = source.positions.narrow(0, sourceRow, sourceRows).narrow(2, sourceStart, count))
            target.copy_(from);
        if (source.entryState is not null || entryState is not null)
        {
            using var scope = torch.NewDisposeScope();
            int width = (int)(source.entryState ?? entryState)!.size(3);
            var into = AllRowsEntryState(width).narrow(0, row, rows);
            into.zero_();
            if (source.entryState is not null) into.narrow(2, 0, count).copy_(source.entryState.narrow(0, sourceRow, sourceRows).narrow(2, sourceStart, count));
        }
        if (count != Length && (count < Length || Rows > rows) || source.HasHoles) HasHoles = true;
        Length = Math.Max(Length, count);
        AttendedKeysStale = true;
    }

    /// <summary>Empties every row in place, as a fresh layer is (storage, policy state and the tensors a CUDA graph captured stay).</summary>
    internal void EmptyAll()
    {
        if (Length > 0) positions.narrow(2, 0, Length).fill_(-1);
        entryState?.zero_();
        Length = 0;
        HasHoles = false;
        AttendedKeysStale = true;
    }

    /// <summary>Moves row <paramref name="from"/>'s entries into row <paramref name="to"/> (whose entries are dropped) and empties
    /// row <paramref name="from"/>: how serving keeps its live sequences in rows [0, Rows).</summary>
    internal void MoveRow(int from, int to)
    {
        if (Length == 0) return;
        keys.CopyRows(keys, from, 0, to, 0, Length, 1);
        values.CopyRows(values, from, 0, to, 0, Length, 1);
        using (var target = positions.select(0, to).narrow(1, 0, Length))
        using (var source = positions.select(0, from).narrow(1, 0, Length))
            target.copy_(source);
        if (entryState is not null)
            using (var target = entryState.select(0, to))
            using (var source = entryState.select(0, from))
                target.copy_(source);
        EmptyRows(from, 1);
        AttendedKeysStale = true;
    }

    /// <summary>Marks every slot of rows [row, row + rows) empty (their entries stay in storage but are never attended to).</summary>
    internal void EmptyRows(int row, int rows)
    {
        if (Length == 0 || rows == 0) return;
        using var slots = positions.narrow(0, row, rows).narrow(2, 0, Length);
        slots.fill_(-1);
        if (entryState is not null)
            using (var state = entryState.narrow(0, row, rows))
                state.zero_();
        HasHoles = true;
    }

    /// <summary>Copies rows [0, Rows) and slots [0, Length) of <paramref name="source"/> (same storage layout, policy state included)
    /// into this empty layer, with its length and holes.</summary>
    internal void CopyFrom(LayerKvCache source)
    {
        Rows = source.Rows;
        ImportRows(0, source, 0, Rows, 0, source.Length);
        HasHoles = source.HasHoles;
    }

    /// <summary>Occupied slots below <see cref="Length"/> in every row (in use or not) and head, read back from the device.</summary>
    internal long OccupiedEntries()
    {
        if (Length == 0) return 0;
        using var scope = torch.NewDisposeScope();
        return positions.narrow(2, 0, Length).ge(0).sum().item<long>();
    }

    /// <summary>Number of occupied entries per sequence and head, [batch, kvHeads] (a device tensor).</summary>
    public Tensor EntryCounts() => Positions.ge(0).sum(-1); // every slot: free ones hold -1, and the shape stays static

    /// <summary>Bytes held by keys and values.</summary>
    public long Bytes => keys.Bytes + values.Bytes;

    /// <summary>Empties the layer (keeps the allocation; drops the policy's state).</summary>
    public void Clear()
    {
        if (Length > 0) positions.narrow(2, 0, Length).fill_(-1);
        Length = 0;
        HasHoles = false;
        entryState?.Dispose();
        entryState = null;
        AttendedKeysStale = true;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        keys.Dispose();
        values.Dispose();
        positions.Dispose();
        entryState?.Dispose();
        attendedKeys?.Dispose();
    }
}
