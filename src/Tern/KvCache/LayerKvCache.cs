using TorchSharp;
using static TorchSharp.torch;

namespace Tern.KvCache;

/// <summary>
/// One layer's keys and values, preallocated as [batch, kvHeads, capacity, headDim], with the original token position of
/// every entry in [batch, kvHeads, capacity] (-1 marks an empty slot: padding or never written). Slots [0, Length) are in
/// use; entries are appended at Length and evicted per head by <see cref="Keep"/>, which compacts the survivors to the front.
/// </summary>
public sealed class LayerKvCache : IDisposable
{
    internal LayerKvCache(int layer, KvCacheOptions options)
    {
        Layer = layer;
        Capacity = options.Capacity;
        Keys = torch.zeros(new long[] { options.BatchSize, options.KvHeads, options.Capacity, options.HeadDim }, options.DType, options.Device);
        Values = torch.zeros(new long[] { options.BatchSize, options.KvHeads, options.Capacity, options.HeadDim }, options.DType, options.Device);
        Positions = torch.full(new long[] { options.BatchSize, options.KvHeads, options.Capacity }, -1L, ScalarType.Int64, options.Device);
        // The cache is disposed by its owner, not by whatever dispose scope is open when it is created.
        Keys.DetachFromDisposeScope();
        Values.DetachFromDisposeScope();
        Positions.DetachFromDisposeScope();
    }

    /// <summary>Index of the layer.</summary>
    public int Layer { get; }

    /// <summary>Slots preallocated.</summary>
    public int Capacity { get; }

    /// <summary>Slots in use: every entry lives in [0, Length).</summary>
    public int Length { get; private set; }

    /// <summary>True when some slot below <see cref="Length"/> is empty (padding or uneven eviction), so attention needs a mask.</summary>
    public bool HasHoles { get; private set; }

    /// <summary>Key storage [batch, kvHeads, capacity, headDim]. Keys are stored after rotary embedding.</summary>
    public Tensor Keys { get; }

    /// <summary>Value storage [batch, kvHeads, capacity, headDim].</summary>
    public Tensor Values { get; }

    /// <summary>Original token position of each slot [batch, kvHeads, capacity], -1 when empty.</summary>
    public Tensor Positions { get; }

    /// <summary>Keys in use, [batch, kvHeads, Length, headDim] (a view).</summary>
    public Tensor ActiveKeys => Keys.narrow(2, 0, Length);

    /// <summary>Values in use (a view).</summary>
    public Tensor ActiveValues => Values.narrow(2, 0, Length);

    /// <summary>Positions of the slots in use, [batch, kvHeads, Length] (a view).</summary>
    public Tensor ActivePositions => Positions.narrow(2, 0, Length);

    /// <summary>
    /// Appends keys and values [batch, kvHeads, tokens, headDim] with their positions [batch, tokens] (-1 for padding).
    /// <paramref name="hasPadding"/> says whether any position is -1 (known on the host, so no device sync is needed).
    /// </summary>
    /// <param name="slots">When given (static-shape mode), the slots, int64 [tokens] on the device, to write to; they must
    /// equal [Length, Length + tokens) at execution time.</param>
    public void Append(Tensor keys, Tensor values, Tensor positions, bool hasPadding, Tensor? slots = null)
    {
        int tokens = (int)keys.shape[2];
        if (Length + tokens > Capacity)
            throw new InvalidOperationException($"KV cache of layer {Layer}: {Length} + {tokens} entries exceed its {Capacity} slots.");
        if (slots is null)
        {
            Keys.narrow(2, Length, tokens).copy_(keys);
            Values.narrow(2, Length, tokens).copy_(values);
            Positions.narrow(2, Length, tokens).copy_(positions.unsqueeze(1));
        }
        else if (!Interop.FusedKernels.TryCacheAppend(Keys, Values, Positions, keys, values, positions, slots))
        {
            Keys.index_copy_(2, slots, keys);
            Values.index_copy_(2, slots, values);
            Positions.index_copy_(2, slots, positions.unsqueeze(1).expand(Positions.shape[0], Positions.shape[1], tokens));
        }
        Length += tokens;
        HasHoles |= hasPadding;
    }

    /// <summary>Host bookkeeping only: records that a replayed step appended <paramref name="tokens"/> entries
    /// (or, negative, takes back the count of a captured step that did not execute).</summary>
    internal void AdjustLength(int tokens) => Length += tokens;

    /// <summary>
    /// Evicts every entry whose <paramref name="keep"/> flag [batch, kvHeads, Length] is false; survivors keep their
    /// values, positions and relative order, and move to the front. When every row keeps the same number of entries, pass
    /// it as <paramref name="keptPerRow"/> (known on the host); otherwise the largest count is read back from the device.
    /// </summary>
    public void Keep(Tensor keep, int? keptPerRow = null)
    {
        if (Length == 0) return;
        using var scope = torch.NewDisposeScope();
        keep = keep & ActivePositions.ge(0);
        int newLength = keptPerRow ?? (int)keep.sum(-1).max().item<long>();
        // Stable compaction: kept slots first, in slot order.
        var slot = torch.arange(Length, ScalarType.Int64, keep.device).expand(keep.shape);
        var order = torch.where(keep, slot, slot + Length).argsort(-1).narrow(-1, 0, newLength);
        var keptFlags = keep.gather(-1, order);
        var positions = torch.where(keptFlags, ActivePositions.gather(-1, order), torch.tensor(-1L, device: keep.device));
        var index = order.unsqueeze(-1).expand(-1, -1, -1, Keys.shape[3]);
        var keys = ActiveKeys.gather(2, index);
        var values = ActiveValues.gather(2, index);
        Keys.narrow(2, 0, newLength).copy_(keys);
        Values.narrow(2, 0, newLength).copy_(values);
        Positions.narrow(2, 0, newLength).copy_(positions);
        if (Length > newLength) Positions.narrow(2, newLength, Length - newLength).fill_(-1);
        if (keptPerRow is null) HasHoles = true;
        Length = newLength;
    }

    /// <summary>Number of occupied entries per sequence and head, [batch, kvHeads] (a device tensor).</summary>
    public Tensor EntryCounts() => ActivePositions.ge(0).sum(-1);

    /// <summary>Empties the layer (keeps the allocation).</summary>
    public void Clear()
    {
        if (Length > 0) Positions.narrow(2, 0, Length).fill_(-1);
        Length = 0;
        HasHoles = false;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Keys.Dispose();
        Values.Dispose();
        Positions.Dispose();
    }
}
