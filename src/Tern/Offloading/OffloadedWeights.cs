using Tern.Compression;
using Tern.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Offloading;

/// <summary>
/// Every weight of a model at its home tier (<see cref="WeightPlacement"/>), optionally 4-bit group-quantized (FlexGen §1.1.5:
/// groups of 64 along dim 0, 1-D tensors never compressed), and the loading of one stage's weights to the compute device.
/// A tied tensor (LM head = embedding) has one home.
/// </summary>
internal sealed class OffloadedWeights : IDisposable
{
    /// <summary>FlexGen's weight compression: 4 bits, groups of 64 along the output-channel dimension (dim 0).</summary>
    public static readonly GroupQuantizationOptions Compression = new() { Bits = 4, GroupSize = 64, Dimension = 0 };

    readonly PartWeights[] parts;
    readonly Home[][] stages;
    readonly List<Home> homes = new();

    /// <summary>One tensor's home: one buffer, or three (codes, step, min) when compressed.</summary>
    internal sealed class Home(Tier tier, TierBuffer[] parts, long[][] partShapes, long[] shape, int dimension, ScalarType dtype, bool compressed)
    {
        public Tier Tier => tier;
        public long Bytes => parts.Sum(p => p.Bytes);
        public TierBuffer[] Parts => parts;
        public long[][] PartShapes => partShapes;
        public long[] Shape => shape;
        public int Dimension => dimension;
        public ScalarType DType => dtype;
        public bool Compressed => compressed;
    }

    OffloadedWeights(PartWeights[] parts, Home[][] stages) => (this.parts, this.stages) = (parts, stages);

    /// <summary>Bytes at home on each tier.</summary>
    public long BytesOn(Tier tier) => homes.Where(h => h.Tier == tier).Sum(h => h.Bytes);

    /// <summary>The most bytes loading one stage adds on the compute device: copies of its weights that live elsewhere, and
    /// the dequantized copies of compressed ones (resident uncompressed weights add nothing).</summary>
    public long LargestStageLoadBytes => stages.Max(s => s.Distinct().Sum(h =>
        (h.Compressed && h.Tier != Tier.Gpu ? h.Bytes : 0) + (h.Compressed || h.Tier != Tier.Gpu ? TierBuffer.Count(h.Shape) * h.DType.ElementSize() : 0)));

    /// <summary>
    /// Places the weights of the model's parts (host tensors) on their tiers by <paramref name="shares"/>, consuming them: each
    /// source is disposed as soon as its home holds a copy.
    /// </summary>
    public static OffloadedWeights Place(IReadOnlyList<PartWeights> stageWeights, TierFractions shares, bool compress, Device device,
        ITransferEngine engine, OffloadDirectory? directory)
    {
        var unique = new List<Tensor>();
        var seen = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        foreach (var t in stageWeights.SelectMany(s => s.Tensors))
            if (seen.Add(t)) unique.Add(t);
        bool Compresses(Tensor t) => compress && t.dim() >= 2;
        long StoredBytes(Tensor t) => Compresses(t)
            ? (t.NumberOfElements + 1) / 2 + 2 * t.dtype.ElementSize() * (t.NumberOfElements / Math.Max(1, t.size(0)) * ((t.size(0) + 63) / 64))
            : t.NumberOfElements * t.ElementSize;
        var tiers = WeightPlacement.Assign(unique.Select(StoredBytes).ToArray(), shares);
        var byTensor = new Dictionary<Tensor, Home>(ReferenceEqualityComparer.Instance);
        try
        {
            using var noGrad = torch.no_grad();
            for (int i = 0; i < unique.Count; i++)
            {
                byTensor[unique[i]] = MakeHome(unique[i], tiers[i], Compresses(unique[i]), device, engine, directory, $"weight{i}");
                unique[i].Dispose(); // host memory goes back tensor by tensor: a 30B model never needs two copies
            }
        }
        catch
        {
            foreach (var h in byTensor.Values) DisposeHome(h);
            throw;
        }
        var placed = new OffloadedWeights(stageWeights.ToArray(), stageWeights.Select(s => s.Tensors.Select(t => byTensor[t]).ToArray()).ToArray());
        placed.homes.AddRange(byTensor.Values);
        return placed;
    }

    static Home MakeHome(Tensor source, Tier tier, bool compress, Device device, ITransferEngine engine, OffloadDirectory? directory, string name)
    {
        using var scope = torch.NewDisposeScope();
        var shape = source.shape.ToArray();
        Tensor[] parts;
        int dimension = 0;
        if (compress)
        {
            // On the compute device when it is a GPU: quantizing a 30B model on the host takes minutes.
            using var q = GroupQuantizer.Quantize(device.type == DeviceType.CUDA ? source.to(device) : source, Compression);
            parts = new[] { q.Codes.clone(), q.Step.clone(), q.Min.clone() };
            dimension = q.Dimension;
        }
        else parts = new[] { source.contiguous() };
        var partShapes = parts.Select(p => p.shape.ToArray()).ToArray();
        var buffers = new List<TierBuffer>();
        try
        {
            for (int i = 0; i < parts.Length; i++)
            {
                var flat = parts[i].contiguous().reshape(-1);
                var buffer = tier switch
                {
                    Tier.Gpu => new DeviceBuffer(device.type == DeviceType.CPU ? flat.clone() : flat.to(device)),
                    Tier.Cpu => (TierBuffer)new HostBuffer(flat.device_type == DeviceType.CPU ? flat.clone() : flat.cpu(), engine.PinsHostMemory),
                    _ => new DiskBuffer(directory ?? throw new InvalidOperationException("the policy puts weights on disk but no offload directory was given."),
                        flat.NumberOfElements, flat.dtype, $"{name}-{i}"),
                };
                buffers.Add(buffer);
                if (buffer is DiskBuffer disk) disk.WriteNow(flat.cpu());
            }
        }
        catch
        {
            foreach (var b in buffers) b.Dispose();
            throw;
        }
        return new Home(tier, buffers.ToArray(), partShapes, shape, dimension, source.dtype, compress);
    }

    /// <summary>Makes room on <paramref name="device"/> for stage <paramref name="stage"/>'s weights; the copies start as
    /// <see cref="StageLoad.IssueThrough"/> asks, and the weights are usable once all are issued and the engine synchronizes.</summary>
    public StageLoad Begin(int stage, ITransferEngine engine, Device device) => new(parts[stage], stages[stage], engine, device);

    /// <summary>
    /// One stage's weights on the compute device. Resident weights are views of their homes; the others get a target each and
    /// are copied in byte ranges, so that the next stage's load can be spread over the current stage's GPU batches: each
    /// schedule item then moves an equal share while it computes, instead of the first item carrying the whole layer.
    /// </summary>
    internal sealed class StageLoad : IDisposable
    {
        /// <summary>Pieces end on multiples of this many elements (page-aligned disk reads for every element size).</summary>
        internal const long Alignment = 4096;
        readonly PartWeights part;
        readonly Home[] homes;
        readonly ITransferEngine engine;
        readonly Tensor[][] loaded;
        readonly List<(TierBuffer Source, Tensor Target)> copies = new();
        readonly long totalBytes;
        long issuedBytes, pieceOffset;
        int piece;
        PartWeights? materialized;

        /// <param name="part">The part's weights as the model holds them (their names).</param>
        public StageLoad(PartWeights part, Home[] homes, ITransferEngine engine, Device device)
        {
            this.part = part;
            this.homes = homes;
            this.engine = engine;
            loaded = new Tensor[homes.Length][];
            for (int i = 0; i < homes.Length; i++)
            {
                var h = homes[i];
                loaded[i] = h.Parts.Select((p, n) =>
                {
                    if (p.Tier == Tier.Gpu) return p.Load(engine, device, 0, h.PartShapes[n]);
                    var target = torch.empty(h.PartShapes[n], p.DType, device).DetachFromDisposeScope();
                    copies.Add((p, target.view(-1).DetachFromDisposeScope()));
                    return target;
                }).ToArray();
            }
            totalBytes = copies.Sum(c => c.Source.Bytes);
        }

        /// <summary>Bytes this load copies (weights not resident on the compute device).</summary>
        public long TotalBytes => totalBytes;

        /// <summary>Bytes whose copies have been issued so far.</summary>
        public long IssuedBytes => issuedBytes;

        /// <summary>Issues the copies up to <paramref name="fraction"/> of the stage's bytes (1 issues the rest).</summary>
        public void IssueThrough(double fraction)
        {
            long goal = fraction >= 1 ? totalBytes : (long)(fraction * totalBytes);
            while (piece < copies.Count && issuedBytes < goal)
            {
                var (source, target) = copies[piece];
                long left = source.Elements - pieceOffset;
                long wanted = (goal - issuedBytes + source.DType.ElementSize() - 1) / source.DType.ElementSize();
                long count = Math.Min(left, (wanted + Alignment - 1) / Alignment * Alignment);
                var range = target.narrow(0, pieceOffset, count).DetachFromDisposeScope();
                engine.KeepAlive(range); // a view holds the target's device memory: freed deterministically, after the copy
                source.LoadInto(engine, range, pieceOffset);
                issuedBytes += count * source.DType.ElementSize();
                pieceOffset += count;
                if (pieceOffset == source.Elements) (piece, pieceOffset) = (piece + 1, 0);
            }
        }

        /// <summary>The part's weights on the compute device (compressed ones dequantized once there).</summary>
        public PartWeights Weights => materialized ??= part.With(loaded.Select((parts, i) => homes[i].Compressed
            ? GroupQuantizer.Dequantize(new QuantizedTensor(parts[0], parts[1], parts[2], homes[i].Shape, homes[i].Dimension, homes[i].DType, Compression))
                .DetachFromDisposeScope()
            : parts[0]).ToArray());

        public void Dispose()
        {
            foreach (var (_, target) in copies) target.Dispose();
            foreach (var p in loaded.SelectMany(parts => parts)) p.Dispose();
            if (materialized is not null)
                for (int i = 0; i < homes.Length; i++)
                    if (homes[i].Compressed) materialized.Tensors[i].Dispose();
        }
    }

    static void DisposeHome(Home home)
    {
        foreach (var p in home.Parts) p.Dispose();
    }

    public void Dispose()
    {
        foreach (var h in homes) DisposeHome(h);
        homes.Clear();
    }
}
