using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Offloading;

/// <summary>
/// Per-sequence data of one GPU batch (a layer's keys or values, or the hidden states between stages) at its home tiers:
/// the batch's rows (sequences) are split whole between GPU, CPU and disk by <see cref="TierFractions.SplitRows"/>, each
/// tier's rows in one buffer laid out slot-major, [slots, rows, ...item] (FlexGen's (s + n − 1, b·nh, d) cache layout), so that
/// a range of slots (the tokens of a step, or a cache prefix) is one contiguous run in every tier, files included.
/// </summary>
internal sealed class SequenceStore : IDisposable
{
    readonly (int Start, int Rows, TierBuffer Buffer)[] segments;
    readonly long[] item;
    readonly long itemElements;

    SequenceStore((int, int, TierBuffer)[] segments, long[] item)
    {
        this.segments = segments;
        this.item = item;
        itemElements = TierBuffer.Count(item);
    }

    /// <summary>Room for <paramref name="slots"/> slots of <paramref name="rows"/> sequences × <paramref name="item"/>.</summary>
    public static SequenceStore Create(int rows, int slots, long[] item, ScalarType dtype, TierFractions shares, Device device,
        ITransferEngine engine, OffloadDirectory? directory, string name)
    {
        var (g, c, d) = shares.SplitRows(rows);
        var made = new List<(int, int, TierBuffer)>();
        try
        {
            int start = 0;
            foreach (var (tier, n) in new[] { (Tier.Gpu, g), (Tier.Cpu, c), (Tier.Disk, d) })
            {
                if (n == 0) continue;
                made.Add((start, n, TierBuffer.Create(tier, (long)slots * n * TierBuffer.Count(item), dtype, device, engine, directory, $"{name}-{tier}".ToLowerInvariant())));
                start += n;
            }
        }
        catch
        {
            foreach (var (_, _, b) in made) b.Dispose();
            throw;
        }
        return new SequenceStore(made.ToArray(), item);
    }

    /// <summary>Bytes held on <paramref name="tier"/>.</summary>
    public long BytesOn(Tier tier) => segments.Where(s => s.Buffer.Tier == tier).Sum(s => s.Buffer.Bytes);

    /// <summary>Starts loading slots [start, start + count) of every row to <paramref name="device"/>: one tensor
    /// [count, rows of the tier, ...item] per tier, to <see cref="Assemble"/> after the engine synchronizes.</summary>
    public Tensor[] Load(ITransferEngine engine, Device device, int start, int count) => segments
        .Select(s => s.Buffer.Load(engine, device, start * s.Rows * itemElements, new[] { (long)count, s.Rows }.Concat(item).ToArray()))
        .ToArray();

    /// <summary>[count, rows, ...item] from the tiers' parts (a new tensor in the caller's dispose scope).</summary>
    public static Tensor Assemble(Tensor[] parts) => parts.Length == 1 ? parts[0].alias() : torch.cat(parts, 1);

    /// <summary>Starts storing <paramref name="slotMajor"/> [count, rows, ...item] (on the compute device) into slots
    /// [start, start + count); the engine keeps what it needs alive and <paramref name="slotMajor"/> is the engine's to free.</summary>
    public void Store(ITransferEngine engine, Tensor slotMajor, int start)
    {
        long count = slotMajor.size(0);
        foreach (var (first, rows, buffer) in segments)
        {
            using var rowsOfTier = slotMajor.narrow(1, first, rows);
            var part = rowsOfTier.contiguous().DetachFromDisposeScope();
            engine.KeepAlive(part);
            buffer.Store(engine, part, start * rows * itemElements);
        }
        engine.KeepAlive(slotMajor);
    }

    public void Dispose()
    {
        foreach (var (_, _, b) in segments) b.Dispose();
    }
}
