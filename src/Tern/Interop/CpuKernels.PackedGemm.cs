using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Tern.Interop;

internal static unsafe partial class CpuKernels
{
    /// <summary>
    /// A prefill's product on the CPU (bf16; fp32 where MKL runs generic code): accumulated [m, n] = x [m, k] · W [n, k]ᵀ in
    /// fp32, bf16 x widened once, W repacked for the call as [⌈n/8⌉][k][8] (eight outputs' weights side by side for each input),
    /// bf16 widened in registers. Each tile is an outer product — four rows of x broadcast against three packed blocks, twelve
    /// sums in registers, no sums across lanes — over a slice of k that keeps the three blocks in L1, for 64 rows of x kept in
    /// L2. On an AVX2 development host's AMD cores it multiplies at 52 GMAC/s a core against MKL's fp32 GEMM's 35–40 (one
    /// thread, the default model's shapes at 1,024 rows), and needs neither W's fp32 copy nor MKL's packing of both operands and
    /// zeroing of the output. The default model's prefill at 8 × 128 tokens (alternating processes): bf16 208.5–213.8 →
    /// 166.1–168.1 ms (it replaced W widened to fp32 for MKL's GEMM), fp32 196.8–220.4 → 175.0–177.9 (libtorch's MKL call
    /// before); the 1.1B shape's 512-token bf16 prefill 7.67–7.80 → 6.26–6.34 s.
    /// </summary>
    static void PackedGemm<T>(long m, long n, long k, byte* x, byte* weight, float* accumulated) where T : struct, IElement
    {
        long blocks = (n + 7) / 8, group = Math.Max(TileBlocks, PackedGroupBytes / (8 * T.Size * k) / TileBlocks * TileBlocks);
        using var xs = AlignedScratch.Rent(typeof(T) == typeof(F32) ? 1 : m * k);
        float* wide = (float*)x;
        if (typeof(T) == typeof(Bf16))
        {
            wide = xs.Pointer;
            Widen((ushort*)x, wide, m * k);
        }
        nint pw = (nint)weight, px = (nint)wide, pa = (nint)accumulated;
        // The weight a group of blocks at a time, packed into a buffer that stays in cache (L3) and shared by the cores — the
        // whole packed weight would be a scratch block as large as the largest weight, kept for the process's life — then x's
        // rows split over the cores, each multiplying its rows by the whole group (splitting the blocks instead, each core
        // re-reading all of x for its few blocks, made the default model's prefill ~7% slower). Against packing the whole weight
        // at once: the default model's prefill 177.1–179.1 → 173.4–175.0 ms, the 1.1B shape's 6.20–6.29 → 6.04–6.15 s.
        using var packed = AlignedScratch.Rent((Math.Min(group, blocks) * k * 8 * T.Size + 3) / 4);
        nint pp = (nint)packed.Pointer;
        long blockBytes = k * 8 * T.Size;
        for (long g = 0; g < blocks; g += group)
        {
            long first = g, end = Math.Min(blocks, g + group);
            CoreTeam.Shared.Split(end - first, 1, (from, to) =>
            {
                if (typeof(T) == typeof(F32)) Pack((float*)pw, n, k, (float*)((byte*)pp + from * blockBytes), first + from, first + to);
                else Pack((ushort*)pw, n, k, (ushort*)((byte*)pp + from * blockBytes), first + from, first + to);
            });
            CoreTeam.Shared.Split(m, TileRows, (from, to) => PackedRows<T>((float*)px, (byte*)pp, (float*)pa, n, k, from, to, first, end));
        }
    }

    /// <summary>Rows of x per tile; blocks of eight outputs per tile; rows of x a core keeps in L2 while the blocks stream past;
    /// inputs a slice of k takes at most (three blocks of 384 inputs: 18 KB of L1); a group of packed blocks (in L3).</summary>
    const int TileRows = 4, TileBlocks = 3, ChunkRows = 64, SliceInputs = 384, PackedGroupBytes = 4 << 20;

    /// <summary>W's blocks [from, to) of eight rows (bf16 as <see cref="ushort"/>, or fp32) into <paramref name="packed"/>
    /// [to − from][k][8], rows past n as zeros: 8 × 8 transposes, the inputs past the last multiple of 8 one at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // optimised at the first prefill: unoptimised, its transposes were calls
    static void Pack<TValue>(TValue* weight, long n, long k, TValue* packed, long from, long to) where TValue : unmanaged
    {
        for (long b = from; b < to; b++)
        {
            TValue* target = packed + (b - from) * k * 8;
            long rows = Math.Min(8, n - 8 * b);
            long i = 0;
            if (rows == 8)
                for (; i + 8 <= k; i += 8) Transpose8(weight + 8 * b * k + i, k, target + i * 8);
            for (; i < k; i++)
                for (long j = 0; j < 8; j++) target[i * 8 + j] = j < rows ? weight[(8 * b + j) * k + i] : default;
        }
    }

    /// <summary>Eight rows of eight values (row stride <paramref name="stride"/>) written as their eight columns, each eight
    /// values long: pairs of rows interleaved, then pairs of pairs, then halves, each step doubling the run of one column.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Transpose8<TValue>(TValue* source, long stride, TValue* target) where TValue : unmanaged
    {
        if (typeof(TValue) == typeof(float))
        {
            float* w = (float*)source, t = (float*)target;
            var r0 = Avx.LoadVector256(w); var r1 = Avx.LoadVector256(w + stride);
            var r2 = Avx.LoadVector256(w + 2 * stride); var r3 = Avx.LoadVector256(w + 3 * stride);
            var r4 = Avx.LoadVector256(w + 4 * stride); var r5 = Avx.LoadVector256(w + 5 * stride);
            var r6 = Avx.LoadVector256(w + 6 * stride); var r7 = Avx.LoadVector256(w + 7 * stride);
            var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1); var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
            var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5); var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
            var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE); var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
            var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE); var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
            // Each 128-bit half holds four rows of one column: the halves exchanged.
            Avx.Store(t, Avx.Permute2x128(u0, u4, 0x20)); Avx.Store(t + 8, Avx.Permute2x128(u1, u5, 0x20));
            Avx.Store(t + 16, Avx.Permute2x128(u2, u6, 0x20)); Avx.Store(t + 24, Avx.Permute2x128(u3, u7, 0x20));
            Avx.Store(t + 32, Avx.Permute2x128(u0, u4, 0x31)); Avx.Store(t + 40, Avx.Permute2x128(u1, u5, 0x31));
            Avx.Store(t + 48, Avx.Permute2x128(u2, u6, 0x31)); Avx.Store(t + 56, Avx.Permute2x128(u3, u7, 0x31));
            return;
        }
        ushort* v = (ushort*)source, o = (ushort*)target;
        var a0 = Sse2.LoadVector128(v); var a1 = Sse2.LoadVector128(v + stride); var a2 = Sse2.LoadVector128(v + 2 * stride);
        var a3 = Sse2.LoadVector128(v + 3 * stride); var a4 = Sse2.LoadVector128(v + 4 * stride); var a5 = Sse2.LoadVector128(v + 5 * stride);
        var a6 = Sse2.LoadVector128(v + 6 * stride); var a7 = Sse2.LoadVector128(v + 7 * stride);
        var b0 = Sse2.UnpackLow(a0, a1).AsUInt32(); var b1 = Sse2.UnpackHigh(a0, a1).AsUInt32();
        var b2 = Sse2.UnpackLow(a2, a3).AsUInt32(); var b3 = Sse2.UnpackHigh(a2, a3).AsUInt32();
        var b4 = Sse2.UnpackLow(a4, a5).AsUInt32(); var b5 = Sse2.UnpackHigh(a4, a5).AsUInt32();
        var b6 = Sse2.UnpackLow(a6, a7).AsUInt32(); var b7 = Sse2.UnpackHigh(a6, a7).AsUInt32();
        var c0 = Sse2.UnpackLow(b0, b2).AsUInt64(); var c1 = Sse2.UnpackHigh(b0, b2).AsUInt64();
        var c2 = Sse2.UnpackLow(b1, b3).AsUInt64(); var c3 = Sse2.UnpackHigh(b1, b3).AsUInt64();
        var c4 = Sse2.UnpackLow(b4, b6).AsUInt64(); var c5 = Sse2.UnpackHigh(b4, b6).AsUInt64();
        var c6 = Sse2.UnpackLow(b5, b7).AsUInt64(); var c7 = Sse2.UnpackHigh(b5, b7).AsUInt64();
        Sse2.Store(o, Sse2.UnpackLow(c0, c4).AsUInt16()); Sse2.Store(o + 8, Sse2.UnpackHigh(c0, c4).AsUInt16());
        Sse2.Store(o + 16, Sse2.UnpackLow(c1, c5).AsUInt16()); Sse2.Store(o + 24, Sse2.UnpackHigh(c1, c5).AsUInt16());
        Sse2.Store(o + 32, Sse2.UnpackLow(c2, c6).AsUInt16()); Sse2.Store(o + 40, Sse2.UnpackHigh(c2, c6).AsUInt16());
        Sse2.Store(o + 48, Sse2.UnpackLow(c3, c7).AsUInt16()); Sse2.Store(o + 56, Sse2.UnpackHigh(c3, c7).AsUInt16());
    }

    /// <summary>Rows [from, to) and blocks [firstBlock, endBlock) of the output (<paramref name="packed"/> holding those blocks
    /// from its start): for each slice of k, for each chunk of <see cref="ChunkRows"/> rows of x, every block against the chunk a tile at a
    /// time; slices after the first add to what the earlier ones stored.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PackedRows<T>(float* x, byte* packed, float* accumulated, long n, long k, long from, long to, long firstBlock, long endBlock)
        where T : struct, IElement
    {
        long slices = (k + SliceInputs - 1) / SliceInputs, slice = (k + slices - 1) / slices;
        float* sums = stackalloc float[TileRows * TileBlocks * 8];
        for (long s = 0; s < k; s += slice)
        {
            int inputs = (int)Math.Min(slice, k - s);
            for (long c = from; c < to; c += ChunkRows)
            {
                long chunkEnd = Math.Min(to, c + ChunkRows);
                for (long b = firstBlock; b < endBlock; b += TileBlocks)
                {
                    int blocksHere = (int)Math.Min(TileBlocks, endBlock - b), columns = (int)Math.Min(8 * blocksHere, n - b * 8);
                    for (long r = c; r < chunkEnd; r += TileRows)
                    {
                        int rows = (int)Math.Min(TileRows, chunkEnd - r);
                        Tile<T>(x + r * k + s, k, rows, packed + ((b - firstBlock) * k + s) * 8 * T.Size, k * 8 * T.Size, blocksHere, inputs, sums);
                        float* output = accumulated + r * n + b * 8;
                        for (int row = 0; row < rows; row++) StoreTileRow(sums + row * 8 * TileBlocks, output + row * n, columns, s > 0);
                    }
                }
            }
        }
    }

    /// <summary>
    /// One tile's sums: up to four rows of x (row stride <paramref name="k"/>) against up to three packed blocks (stride
    /// <paramref name="blockStride"/>) over <paramref name="inputs"/> inputs, into <paramref name="sums"/> [4][24]. Missing rows
    /// and blocks repeat the first (computed, never stored), so one loop serves the edges. No call after the loop: sums live
    /// across a call would be spilled to the stack in every iteration (no callee-saved vector registers on x64 Unix).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile<T>(float* x, long k, int rows, byte* block, long blockStride, int blocksHere, int inputs, float* sums) where T : struct, IElement
    {
        float* x0 = x, x1 = rows > 1 ? x + k : x, x2 = rows > 2 ? x + 2 * k : x, x3 = rows > 3 ? x + 3 * k : x;
        byte* p0 = block, p1 = blocksHere > 1 ? block + blockStride : block, p2 = blocksHere > 2 ? block + 2 * blockStride : block;
        Vector256<float> c00 = default, c01 = default, c02 = default, c10 = default, c11 = default, c12 = default,
            c20 = default, c21 = default, c22 = default, c30 = default, c31 = default, c32 = default;
        for (int i = 0; i < inputs; i++)
        {
            var w0 = T.Load8(p0, i * 8); var w1 = T.Load8(p1, i * 8); var w2 = T.Load8(p2, i * 8);
            var v = Vector256.Create(x0[i]); c00 = Fma.MultiplyAdd(w0, v, c00); c01 = Fma.MultiplyAdd(w1, v, c01); c02 = Fma.MultiplyAdd(w2, v, c02);
            v = Vector256.Create(x1[i]); c10 = Fma.MultiplyAdd(w0, v, c10); c11 = Fma.MultiplyAdd(w1, v, c11); c12 = Fma.MultiplyAdd(w2, v, c12);
            v = Vector256.Create(x2[i]); c20 = Fma.MultiplyAdd(w0, v, c20); c21 = Fma.MultiplyAdd(w1, v, c21); c22 = Fma.MultiplyAdd(w2, v, c22);
            v = Vector256.Create(x3[i]); c30 = Fma.MultiplyAdd(w0, v, c30); c31 = Fma.MultiplyAdd(w1, v, c31); c32 = Fma.MultiplyAdd(w2, v, c32);
        }
        c00.Store(sums); c01.Store(sums + 8); c02.Store(sums + 16);
        c10.Store(sums + 24); c11.Store(sums + 32); c12.Store(sums + 40);
        c20.Store(sums + 48); c21.Store(sums + 56); c22.Store(sums + 64);
        c30.Store(sums + 72); c31.Store(sums + 80); c32.Store(sums + 88);
    }

    /// <summary>A tile row's 24 sums into its first <paramref name="columns"/> output columns, added to them when
    /// <paramref name="add"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void StoreTileRow(float* sums, float* output, int columns, bool add)
    {
        if (columns < 8 * TileBlocks)
        {
            for (int j = 0; j < columns; j++) output[j] = add ? output[j] + sums[j] : sums[j];
            return;
        }
        for (int j = 0; j < 8 * TileBlocks; j += 8)
        {
            var v = Vector256.Load(sums + j);
            if (add) v += Vector256.Load(output + j);
            v.Store(output + j);
        }
    }

    /// <summary>Whether <see cref="PackedGemm{T}"/> runs here (AVX2 and FMA).</summary>
    internal static bool PackedGemmSupported => Avx2.IsSupported && Fma.IsSupported;
}
