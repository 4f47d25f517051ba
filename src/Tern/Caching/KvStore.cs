using Tern.Compression;
using Tern.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Caching;

/// <summary>
/// Storage of one layer's keys or values, [batch, kvHeads, capacity, headDim] slots: either plain tensors in the model's
/// dtype (<see cref="DenseKvStore"/>) or FlexGen group-quantized codes (<see cref="QuantizedKvStore"/>).
/// </summary>
internal abstract class KvStore : IDisposable
{
    /// <summary>Plain storage for 16 bits (the model's dtype), group-quantized storage for 8 or 4.</summary>
    public static KvStore Create(KvCacheOptions options) => options.Bits == 16
        ? new DenseKvStore(options)
        : new QuantizedKvStore(options);

    /// <summary>Writes entries [batch, kvHeads, tokens, headDim] into slots [start, start + tokens).</summary>
    public abstract void Write(int start, Tensor entries);

    /// <summary>Entries of slots [0, length) as [batch, kvHeads, length, headDim] in the model's dtype.</summary>
    public Tensor Read(int length) => Read(0, length);

    /// <summary>Entries of slots [start, start + count) as [batch, kvHeads, count, headDim] in the model's dtype.</summary>
    public abstract Tensor Read(int start, int count);

    /// <summary>Moves the entries at <paramref name="order"/> [batch, kvHeads, n] (slot indexes below the current length) to
    /// slots [0, n), each row in its own order.</summary>
    public abstract void Compact(Tensor order);

    /// <summary>Moves the entries of slots [from, from + count) to slots [to, to + count), every row in use alike (the slots
    /// left behind keep stale entries: the caller marks them free).</summary>
    public void Shift(int from, int to, int count)
    {
        using var scope = torch.NewDisposeScope(); // owns the row views, never the storage InRows may return itself
        foreach (var part in Parts) ShiftTensor(InRows(part), from, to, count);
    }

    /// <summary>Bytes held.</summary>
    public abstract long Bytes { get; }

    /// <summary>Bytes one entry of <paramref name="headDim"/> elements takes in storage of <paramref name="bits"/> bits per
    /// element: the elements themselves at 16 bits (<paramref name="elementSize"/> bytes each), else the codes and one (step,
    /// min) pair per group of 64, the last group zero-padded.</summary>
    public static long EntryBytes(int headDim, int bits, int elementSize)
    {
        const int group = QuantizedKvStore.GroupSize;
        return bits >= 16 ? (long)headDim * elementSize : (headDim + group - 1) / group * ((long)group * bits / 8 + 2 * elementSize);
    }

    /// <summary>Rows [0, Rows) that <see cref="Write"/>, <see cref="Read(int, int)"/> and <see cref="Compact"/> address (the batch by default).</summary>
    public int Rows { get; set; }

    /// <summary>A tensor of the storage narrowed to the rows in use.</summary>
    protected Tensor InRows(Tensor storage) => Rows == storage.size(0) ? storage : storage.narrow(0, 0, Rows);

    /// <summary>Copies slots [sourceStart, sourceStart + count) of <paramref name="source"/>'s rows [sourceRow, sourceRow + rows)
    /// to slots [start, start + count) of rows [row, row + rows) (any rows, in use or not); both stores have the same layout. A
    /// one-row source fills every row.</summary>
    public void CopyRows(KvStore source, int sourceRow, int sourceStart, int row, int start, int count, int rows)
    {
        var from = source.Parts;
        var to = Parts;
        for (int i = 0; i < to.Count; i++)
        {
            using var target = to[i].narrow(0, row, rows).narrow(2, start, count);
            using var slots = from[i].narrow(0, sourceRow, from[i].size(0) == 1 ? 1 : rows).narrow(2, sourceStart, count);
            target.copy_(slots);
        }
    }

    /// <summary>The storage tensors, each [batch, kvHeads, capacity, ...] (slot dimension 2): the entries themselves, or the
    /// codes and the (step, min) pairs. Offloading moves slots of these between tiers as they are, so a kept entry never
    /// changes.</summary>
    public abstract IReadOnlyList<Tensor> Parts { get; }

    /// <inheritdoc />
    public abstract void Dispose();

    /// <summary>Writes one entry per row and head, <paramref name="entries"/> [rows, heads, 1, headDim], at slot
    /// <paramref name="slots"/> [rows, heads, 1] of each.</summary>
    public abstract void WriteAt(Tensor slots, Tensor entries);

    /// <summary>Scatters <paramref name="entries"/> [B,H,1,...] into <paramref name="storage"/> [B,H,capacity,...] at slot
    /// <paramref name="slots"/> [B,H,1] of each row and head.</summary>
    internal static void ScatterTensor(Tensor storage, Tensor slots, Tensor entries)
    {
        var index = slots;
        for (long d = 3; d < storage.dim(); d++) index = index.unsqueeze(-1); // [B,H,1] → [B,H,1,1…]
        storage.scatter_(2, index.expand_as(entries), entries);
    }

    /// <summary>Gathers slots <paramref name="order"/> [B,H,n] of <paramref name="storage"/> [B,H,capacity,...] into its front.</summary>
    internal static void CompactTensor(Tensor storage, Tensor order)
    {
        long n = order.size(2);
        var shape = storage.shape.ToArray();
        shape[2] = n;
        var index = order.reshape(order.shape.Concat(Enumerable.Repeat(1L, storage.shape.Length - 3)).ToArray()).expand(shape);
        var gathered = storage.gather(2, index); // a copy, so overlapping source and target slots are safe
        storage.narrow(2, 0, n).copy_(gathered);
    }

    /// <summary>Copies slots [from, from + count) of <paramref name="storage"/> [B,H,capacity,...] to slots [to, to + count).</summary>
    internal static void ShiftTensor(Tensor storage, int from, int to, int count)
    {
        if (from == to || count == 0) return;
        // The ranges overlap whenever fewer slots move down than the block holds (sink: one evicted token, a window of
        // thousands): on CUDA one kernel moves the block in place; copy_ refuses partially overlapping tensors and an
        // element-order copy would read slots it already overwrote, so elsewhere the block goes through a temporary (one extra
        // copy of the block, no index).
        if (FusedKernels.TryShiftSlots(storage, from, to, count)) return;
        using var scope = torch.NewDisposeScope();
        storage.narrow(2, to, count).copy_(storage.narrow(2, from, count).clone());
    }
}

/// <summary>Keys or values as one preallocated tensor in the model's dtype.</summary>
internal sealed class DenseKvStore : KvStore
{
    public DenseKvStore(KvCacheOptions o)
    {
        // The cache is disposed by its owner, not by whatever dispose scope is open when it is created.
        Storage = torch.zeros(new long[] { o.BatchSize, o.KvHeads, o.Capacity, o.HeadDim }, o.DType, o.Device).DetachFromDisposeScope();
        Rows = o.BatchSize;
    }

    /// <summary>The whole storage, [batch, kvHeads, capacity, headDim].</summary>
    public Tensor Storage { get; }


    public override void Write(int start, Tensor entries) => InRows(Storage).narrow(2, start, entries.size(2)).copy_(entries);

    public override void WriteAt(Tensor slots, Tensor entries) => ScatterTensor(InRows(Storage), slots, entries);

    public override Tensor Read(int start, int count)
    {
        var rows = InRows(Storage);
        return start == 0 && count == Storage.size(2) ? rows : rows.narrow(2, start, count);
    }

    public override void Compact(Tensor order) => CompactTensor(InRows(Storage), order);

    public override long Bytes => Storage.NumberOfElements * Storage.ElementSize;

    public override IReadOnlyList<Tensor> Parts => new[] { Storage };

    public override void Dispose() => Storage.Dispose();
}

/// <summary>
/// Keys or values compressed by <see cref="GroupQuantizer"/> as FlexGen compresses its KV cache (§1.1.5): groups of 64 along
/// the head dimension, asymmetric, 8 bits or 4 bits (two codes per byte), one (step, min) pair per group in the model's dtype.
/// Entries are quantized once when written and dequantized for every read; compaction moves codes, so a kept entry reads back
/// bit-identical to what its first read gave.
/// </summary>
internal sealed class QuantizedKvStore : KvStore
{
    readonly GroupQuantizationOptions quantization;
    readonly Tensor codes, step, min; // [B,H,capacity,groups,codesPerGroup] and [B,H,capacity,groups,1]
    readonly long heads, headDim;
    readonly ScalarType dtype;

    public QuantizedKvStore(KvCacheOptions o)
    {
        quantization = new GroupQuantizationOptions { Bits = o.Bits, GroupSize = GroupSize, Dimension = -1 };
        (Rows, heads, headDim, dtype) = (o.BatchSize, o.KvHeads, o.HeadDim, o.DType);
        long groups = (o.HeadDim + GroupSize - 1) / GroupSize;
        long codesPerGroup = o.Bits == 4 ? GroupSize / 2 : GroupSize;
        codes = torch.zeros(new long[] { Rows, heads, o.Capacity, groups, codesPerGroup }, ScalarType.Byte, o.Device).DetachFromDisposeScope();
        step = torch.zeros(new long[] { Rows, heads, o.Capacity, groups, 1 }, o.DType, o.Device).DetachFromDisposeScope();
        min = torch.zeros(new long[] { Rows, heads, o.Capacity, groups, 1 }, o.DType, o.Device).DetachFromDisposeScope();
    }

    /// <summary>Elements per (step, min) pair: FlexGen's group size.</summary>
    public const int GroupSize = 64;

    public override void Write(int start, Tensor entries)
    {
        using var q = GroupQuantizer.Quantize(entries, quantization);
        long t = entries.size(2);
        InRows(codes).narrow(2, start, t).copy_(q.Codes);
        InRows(step).narrow(2, start, t).copy_(q.Step);
        InRows(min).narrow(2, start, t).copy_(q.Min);
    }

    public override void WriteAt(Tensor slots, Tensor entries)
    {
        using var q = GroupQuantizer.Quantize(entries, quantization);
        ScatterTensor(InRows(codes), slots, q.Codes);
        ScatterTensor(InRows(step), slots, q.Step);
        ScatterTensor(InRows(min), slots, q.Min);
    }

    public override Tensor Read(int start, int count)
    {
        // Views of the storage: the wrapper is not disposed (that would dispose the views, which the scope owns anyway).
        var view = new QuantizedTensor(InRows(codes).narrow(2, start, count), InRows(step).narrow(2, start, count), InRows(min).narrow(2, start, count),
            new[] { Rows, heads, count, headDim }, 3, dtype, quantization);
        return GroupQuantizer.Dequantize(view);
    }

    public override void Compact(Tensor order)
    {
        CompactTensor(InRows(codes), order);
        CompactTensor(InRows(step), order);
        CompactTensor(InRows(min), order);
    }

    public override long Bytes => codes.NumberOfElements + (step.NumberOfElements + min.NumberOfElements) * step.ElementSize;

    public override IReadOnlyList<Tensor> Parts => new[] { codes, step, min };

    public override void Dispose()
    {
        codes.Dispose();
        step.Dispose();
        min.Dispose();
    }
}
