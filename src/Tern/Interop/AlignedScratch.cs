using System.Collections.Concurrent;
using System.Numerics;
using System.Runtime.InteropServices;

namespace Tern.Interop;

/// <summary>
/// Scratch buffers of fp32 for the CPU kernels, in native memory aligned to a cache line and reused across calls: blocks of
/// power-of-two sizes, kept for the life of the process (never trimmed: as many blocks of a size as leases of it were ever
/// held at once — a few per linear map's shape). A managed array's data starts 16 bytes into a line, so half of the 32-byte
/// loads and stores that MKL and the AVX2 kernels make into one span two cache lines (the default model's bf16 prefill at
/// 8 × 128 tokens: 237 → 225 ms aligned).
/// </summary>
internal static unsafe class AlignedScratch
{
    const int Alignment = 64, SmallestClass = 12; // 4 KB
    static readonly ConcurrentBag<nint>[] Free = Enumerable.Range(0, 48).Select(_ => new ConcurrentBag<nint>()).ToArray();

    /// <summary>A buffer of at least <paramref name="count"/> floats, uninitialised; dispose the lease to return it.</summary>
    public static Lease Rent(long count)
    {
        int sizeClass = Math.Max(SmallestClass, 64 - BitOperations.LeadingZeroCount((ulong)Math.Max(1, count * sizeof(float) - 1)));
        if (!Free[sizeClass].TryTake(out nint block)) block = (nint)NativeMemory.AlignedAlloc((nuint)(1L << sizeClass), Alignment);
        return new Lease((float*)block, sizeClass);
    }

    /// <summary>A rented buffer: <see cref="Pointer"/> until disposed.</summary>
    public readonly struct Lease : IDisposable
    {
        readonly int sizeClass;

        internal Lease(float* pointer, int sizeClass)
        {
            Pointer = pointer;
            this.sizeClass = sizeClass;
        }

        /// <summary>The buffer's first float, aligned to 64 bytes.</summary>
        public float* Pointer { get; }

        /// <inheritdoc />
        public void Dispose() => Free[sizeClass].Add((nint)Pointer);
    }
}
