using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Checkpoints;

/// <summary>
/// Bulk copies between native memory and the storage of contiguous CPU tensors. TorchSharp 0.107 exposes a
/// tensor's memory only as <see cref="Tensor.bytes"/>, a span limited to 2 GiB, so larger tensors go in chunks of
/// 1-D views; each chunk is one memcpy.
/// </summary>
internal static unsafe class TensorBytes
{
    /// <summary>Largest chunk copied through one span.</summary>
    internal const long DefaultChunkBytes = 1L << 30;

    /// <summary>Copies <paramref name="byteCount"/> bytes from <paramref name="source"/> into <paramref name="destination"/>
    /// (a new, contiguous CPU tensor of exactly that many bytes).</summary>
    public static void CopyInto(Tensor destination, byte* source, long byteCount, long chunkBytes = DefaultChunkBytes)
    {
        if (byteCount == 0)
        {
            return;
        }
        if (byteCount <= chunkBytes && byteCount <= int.MaxValue)
        {
            new ReadOnlySpan<byte>(source, (int)byteCount).CopyTo(destination.bytes);
            return;
        }
        nint from = (nint)source;
        ForEachChunk(destination, byteCount, chunkBytes, (span, offset) =>
            new ReadOnlySpan<byte>((byte*)from + offset, span.Length).CopyTo(span));
    }

    /// <summary>Writes the bytes of <paramref name="tensor"/> (contiguous, on the CPU) to <paramref name="stream"/>.</summary>
    public static void WriteTo(Tensor tensor, Stream stream, long chunkBytes = DefaultChunkBytes)
    {
        long byteCount = tensor.NumberOfElements * tensor.ElementSize;
        if (byteCount == 0)
        {
            return;
        }
        if (byteCount <= chunkBytes && byteCount <= int.MaxValue)
        {
            stream.Write(tensor.bytes);
            return;
        }
        ForEachChunk(tensor, byteCount, chunkBytes, (span, _) => stream.Write(span));
    }

    delegate void ChunkAction(Span<byte> chunk, long offset);

    static void ForEachChunk(Tensor tensor, long byteCount, long chunkBytes, ChunkAction action)
    {
        long elementSize = tensor.ElementSize;
        long perChunk = Math.Max(1, Math.Min(chunkBytes, int.MaxValue) / elementSize);
        long count = tensor.NumberOfElements;
        using var scope = torch.NewDisposeScope();
        var flat = tensor.reshape(-1);
        for (long start = 0; start < count; start += perChunk)
        {
            long n = Math.Min(perChunk, count - start);
            using var chunk = flat.narrow(0, start, n);
            action(chunk.bytes, start * elementSize);
        }
    }
}
