using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Tern.Interop;

// bf16 decode products of several rows with the CPU's bf16 dot product (AVX512_BF16's vdpbf16ps: 32 multiply-adds of bf16
// pairs into 16 fp32 sums an instruction, twice what widening to fp32 and an FMA do). .NET has no intrinsic for it, so the tile
// is encoded at first use by Iced's assembler and called through a function pointer.
internal static unsafe partial class CpuKernels
{
    /// <summary>Whether bf16 decode products of two or more rows take <see cref="DotProducts"/> (the CPU's bf16 dot product)
    /// rather than widening: where the CPU has it and the tiles could be mapped; settable for tests, which check both (set
    /// true, it stays false where the tiles are unavailable).</summary>
    internal static bool Bf16Dots
    {
        get => bf16Dots ?? DotTiles.Available; // the tiles encoded at the first product that asks, not with the other kernels
        set => bf16Dots = value && DotTiles.Available;
    }

    static bool? bf16Dots;

    /// <summary>
    /// accumulated [m, n] = x [m, k] · W [n, k]ᵀ for bf16 x and W with two or more rows of x: three weight rows against up to
    /// eight rows of x a tile (<see cref="DotTiles"/>, 24 sums of 16 lanes in registers), x repacked first so that a tile reads
    /// its rows' next 32 inputs as consecutive cache lines; k's last k mod 32 inputs summed here. Every pass sums a row in
    /// the same order, so a row's products do not depend on the rows beside it. On the AVX-512 development host (Zen 4) one
    /// thread streaming the default model's eight layers at eight rows: 48.7–53.5 GMAC/s against the widening tile's 34.5–37.6.
    /// </summary>
    static void DotProducts(long m, long n, long k, ushort* x, byte* weight, float* accumulated, bool split)
    {
        long blocks = k / 32, passes = (m + 7) / 8;
        using var packed = AlignedScratch.Rent(passes * blocks * 8 * 16); // bf16 [pass][block][row of the pass][32]
        ushort* xp = (ushort*)packed.Pointer;
        for (long pass = 0; pass < passes; pass++)
        {
            long rows = Math.Min(8, m - 8 * pass), tileRows = DotTiles.RowsOf(rows);
            ushort* passX = xp + pass * blocks * 8 * 32;
            for (long b = 0; b < blocks; b++)
                for (long r = 0; r < tileRows; r++)
                {
                    ushort* to = passX + (b * tileRows + r) * 32;
                    if (r < rows) Unsafe.CopyBlockUnaligned(to, x + (8 * pass + r) * k + 32 * b, 64);
                    else Unsafe.InitBlockUnaligned(to, 0, 64); // a spare row of the tile: computed, never stored
                }
        }
        if (!split)
        {
            DotRange(m, n, k, x, xp, weight, accumulated, 0, n);
            return;
        }
        nint px = (nint)x, pp = (nint)xp, pw = (nint)weight, pa = (nint)accumulated;
        CoreTeam.Shared.Split(n, 16, (from, to) => DotRange(m, n, k, (ushort*)px, (ushort*)pp, (byte*)pw, (float*)pa, from, to));
    }

    /// <summary>Columns [from, to) of <see cref="DotProducts"/>, a triple of weight rows at a time, each pass prefetching its
    /// share of the triple <see cref="PrefetchTriples"/> ahead (as <see cref="RowTriples{T}"/>).</summary>
    static void DotRange(long m, long n, long k, ushort* x, ushort* packed, byte* weight, float* accumulated, long from, long to)
    {
        long blocks = k / 32, done = 32 * blocks, rowBytes = 2 * k, passes = (m + 7) / 8;
        float* sums = stackalloc float[24];
        DotTiles.Args args = default;
        args.EndBytes = 64 * blocks;
        args.PrefetchStep = 192 / passes;
        args.Sums = sums;
        args.OutputStride = 4 * n;
        for (long j = from; j < to; j += 3)
        {
            long count = Math.Min(3, to - j);
            byte* w0 = weight + j * rowBytes;
            args.W0 = w0;
            args.W1 = count > 1 ? w0 + rowBytes : w0;
            args.W2 = count > 2 ? w0 + 2 * rowBytes : w0;
            byte* ahead = j + 3 * PrefetchTriples + 2 < to ? w0 + 3 * PrefetchTriples * rowBytes : w0;
            for (long pass = 0; pass < passes; pass++)
            {
                long first = 8 * pass, rows = Math.Min(8, m - first), tileRows = DotTiles.RowsOf(rows);
                args.X = packed + pass * blocks * 8 * 32;
                args.Prefetch = ahead + pass * (3 * rowBytes / passes);
                // A whole tile over whole blocks stores its sums into the output itself; others through sums, finished here.
                bool whole = count == 3 && rows == tileRows && done == k;
                args.Output = whole ? accumulated + first * n + j : null;
                DotTiles.Run(tileRows, &args);
                if (whole) continue;
                for (long q = 0; q < count; q++)
                    for (long r = 0; r < rows; r++)
                    {
                        float sum = sums[q * tileRows + r];
                        ushort* w = (ushort*)(w0 + q * rowBytes), xr = x + (first + r) * k;
                        for (long i = done; i < k; i++) sum += Bf16.Load((byte*)w, i) * Bf16.Load((byte*)xr, i);
                        accumulated[(first + r) * n + j + q] = sum;
                    }
            }
        }
    }

    /// <summary>
    /// The generated tiles: three bf16 weight rows against four or eight rows of x over whole blocks of 32 inputs, each sum's
    /// 16 lanes added up in the tile and stored into the output (<see cref="Args.Output"/>) or <see cref="Args.Sums"/>
    /// [3][rows]. One pass of the loop: prefetch three lines of
    /// the triple ahead (into L2), load the 3 × 32 weights, then for each row of x load its 32 inputs and add their products
    /// with each weight row (vdpbf16ps: lane i += w[2i]·x[2i] + w[2i+1]·x[2i+1] in fp32, each product exact).
    /// </summary>
    internal static class DotTiles
    {
        /// <summary>A tile's arguments (the generated code reads them by offset, in this order).</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct Args
        {
            public byte* W0, W1, W2;
            /// <summary>x packed [block][tile row][32].</summary>
            public ushort* X;
            /// <summary>64 × the blocks of 32 inputs.</summary>
            public long EndBytes;
            public byte* Prefetch;
            public long PrefetchStep;
            /// <summary>[3][tile rows], unless <see cref="Output"/> is set.</summary>
            public float* Sums;
            /// <summary>Where the sums go instead, if not null: the tile's first row and column of the output.</summary>
            public float* Output;
            /// <summary>Bytes from one row of <see cref="Output"/> to the next.</summary>
            public long OutputStride;
        }

        static readonly delegate* unmanaged[SuppressGCTransition]<Args*, void> Four, Eight;

        static DotTiles()
        {
            if (!NativeBf16 || !System.Runtime.Intrinsics.X86.Avx512F.IsSupported || RuntimeInformation.ProcessArchitecture != Architecture.X64
                || !OperatingSystem.IsLinux()) return; // the System V calling convention: every vector register the callee's
            if (Environment.GetEnvironmentVariable("TERN_CPU_CODEGEN") == "0") return; // no generated code: the widening kernels
            Four = (delegate* unmanaged[SuppressGCTransition]<Args*, void>)ExecutableMemory.TryMap(Encode(4));
            Eight = (delegate* unmanaged[SuppressGCTransition]<Args*, void>)ExecutableMemory.TryMap(Encode(8));
        }

        /// <summary>Whether the CPU has the bf16 dot product and both tiles are mapped (not under <c>TERN_CPU_CODEGEN=0</c>).</summary>
        public static bool Available => Four != null && Eight != null;

        /// <summary>The tile for a pass of <paramref name="rows"/> rows of x: four rows or eight.</summary>
        public static long RowsOf(long rows) => rows > 4 ? 8 : 4;

        public static void Run(long tileRows, Args* args)
        {
            if (tileRows == 8) Eight(args);
            else Four(args);
        }

        /// <summary>The tile for <paramref name="rows"/> rows of x, as machine code; arguments in rdi (System V).</summary>
        internal static byte[] Encode(int rows)
        {
            var a = new Assembler(64) { PreferVex = false }; // EVEX throughout: registers 16–31 are used
            a.mov(rsi, __qword_ptr[rdi]);        // W0
            a.mov(rdx, __qword_ptr[rdi + 8]);    // W1
            a.mov(rcx, __qword_ptr[rdi + 16]);   // W2
            a.mov(r8, __qword_ptr[rdi + 24]);    // X
            a.mov(r9, __qword_ptr[rdi + 32]);    // EndBytes
            a.mov(r10, __qword_ptr[rdi + 40]);   // Prefetch
            a.mov(r11, __qword_ptr[rdi + 48]);   // PrefetchStep
            for (int s = 0; s < 3 * rows; s++) a.vpxord(Zmm(s), Zmm(s), Zmm(s)); // sums: weight row q, row r in zmm(q·rows + r)
            a.xor(eax, eax);
            var loop = a.CreateLabel();
            var end = a.CreateLabel();
            a.test(r9, r9);
            a.je(end);
            a.Label(ref loop);
            a.prefetcht1(__byte_ptr[r10]);
            a.prefetcht1(__byte_ptr[r10 + 64]);
            a.prefetcht1(__byte_ptr[r10 + 128]);
            a.add(r10, r11);
            a.vmovups(zmm29, __zmmword_ptr[rsi + rax]);
            a.vmovups(zmm30, __zmmword_ptr[rdx + rax]);
            a.vmovups(zmm31, __zmmword_ptr[rcx + rax]);
            for (int r = 0; r < rows; r++)
            {
                var input = Zmm(24 + r % 4);
                a.vmovups(input, __zmmword_ptr[r8 + 64 * r]);
                a.vdpbf16ps(Zmm(r), zmm29, input);
                a.vdpbf16ps(Zmm(rows + r), zmm30, input);
                a.vdpbf16ps(Zmm(2 * rows + r), zmm31, input);
            }
            a.add(r8, 64 * rows);
            a.add(rax, 64);
            a.cmp(rax, r9);
            a.jb(loop);
            a.Label(ref end);
            var toSums = a.CreateLabel();
            a.mov(rax, __qword_ptr[rdi + 64]);   // Output
            a.test(rax, rax);
            a.je(toSums);
            a.mov(rdx, __qword_ptr[rdi + 72]);   // OutputStride
            a.lea(rcx, __[rdx + rdx * 2]);
            a.lea(rsi, __[rax + rdx * 4]);       // the output's fifth row
            for (int s = 0; s < 3 * rows; s += 4)
            {
                SumFour(a, s);
                int column = 4 * (s / rows);     // sums s … s + 3: weight row s / rows, rows s mod rows … + 3
                var first = s % rows == 0 ? rax : rsi;
                a.vextractps(__dword_ptr[first + column], xmm24, 0);
                a.vextractps(__dword_ptr[first + rdx + column], xmm24, 1);
                a.vextractps(__dword_ptr[first + rdx * 2 + column], xmm24, 2);
                a.vextractps(__dword_ptr[first + rcx + column], xmm24, 3);
            }
            a.vzeroupper();
            a.ret();
            a.Label(ref toSums);
            a.mov(rax, __qword_ptr[rdi + 56]);   // Sums
            for (int s = 0; s < 3 * rows; s += 4)
            {
                SumFour(a, s);
                a.vmovups(__xmmword_ptr[rax + 4 * s], xmm24);
            }
            a.vzeroupper();
            a.ret();
            using var code = new MemoryStream();
            a.Assemble(new StreamCodeWriter(code), 0); // position-independent: relative jumps only
            return code.ToArray();
        }

        /// <summary>The sums across lanes of zmm <paramref name="first"/> … first + 3 into xmm24, in
        /// <see cref="Sum4"/>(<see cref="Halves"/>(…)) order: the halves added, then three rounds of pairwise adds (horizontal
        /// adds as two shuffles and an add: vhaddps has no encoding for registers past 15).</summary>
        static void SumFour(Assembler a, int first)
        {
            for (int i = 0; i < 4; i++)
            {
                a.vextractf64x4(Ymm(24 + i), Zmm(first + i), 1);
                a.vaddps(Ymm(24 + i), Ymm(24 + i), Ymm(first + i));
            }
            PairwiseAdd(a, 24, 25);
            PairwiseAdd(a, 26, 27);
            PairwiseAdd(a, 24, 26);
            a.vextractf32x4(xmm25, ymm24, 1);
            a.vaddps(xmm24, xmm24, xmm25);
        }

        /// <summary>ymm <paramref name="x"/> = vhaddps(x, y): in each 128-bit lane x0 + x1, x2 + x3, y0 + y1, y2 + y3.</summary>
        static void PairwiseAdd(Assembler a, int x, int y)
        {
            a.vshufps(ymm28, Ymm(x), Ymm(y), 0x88);
            a.vshufps(Ymm(x), Ymm(x), Ymm(y), 0xDD);
            a.vaddps(Ymm(x), Ymm(x), ymm28);
        }

        static AssemblerRegisterZMM Zmm(int index) => new(Register.ZMM0 + index);

        static AssemblerRegisterYMM Ymm(int index) => new(Register.YMM0 + index);
    }
}
