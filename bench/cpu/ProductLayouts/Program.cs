// Issue 19 item 4: the default model's bf16 products in two weight layouts, on this machine's CPU (an experiment, not Tern's
// code path): Tern's own path (CpuKernels.TryLinear, internal, through reflection: its row-major kernel, x widened, the output
// rounded, its core team) against an outer product over the same weights packed [n/8][k][8] — at 8 rows of x three blocks of
// 8 neurons against four rows of x, x broadcast, no sums across lanes; at one row four blocks with k unrolled by two. Shapes of
// models/default (8 layers of qkv 1152×384, o 384×384, gate|up 1408×384, down 384×704, and the 8192×384 head), random weights,
// every product in turn (28.7 MB: streamed), two threads each (the packed kernels by Parallel.For, output left in fp32),
// alternating, medians of 15 × 10 passes.
//   dotnet run -c Release --project bench/cpu/ProductLayouts
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

unsafe
{
    var shapes = new List<(int N, int K)>();
    for (int l = 0; l < 8; l++) shapes.AddRange(new[] { (1152, 384), (384, 384), (1408, 384), (384, 704) });
    shapes.Add((8192, 384));
    using var noGrad = torch.no_grad();
    var weights = shapes.Select(s => (torch.rand(s.N, s.K) - 0.5).to(ScalarType.BFloat16)).ToList();
    // The same weights packed [n/8][k][8] (bf16 bits).
    var packed = weights.Select(w => (IntPtr)Pack(w)).ToList();
    Console.WriteLine($"weights {weights.Sum(w => w.NumberOfElements * 2) / 1e6:F1} MB");
    float* acc = (float*)NativeMemory.AlignedAlloc(8 * 8192 * 4, 64);
    var tryLinear = typeof(Tern.Runtime.ModelDType).Assembly.GetType("Tern.Interop.CpuKernels")!.GetMethod("TryLinear")!;

    foreach (int m in new[] { 8, 1 })
    {
        var xs = shapes.Select(s => (torch.rand(m, s.K) - 0.5).to(ScalarType.BFloat16)).ToList();
        // The packed kernels read fp32 x, pinned.
        var wide = xs.Select(x => GCHandle.Alloc(x.to(ScalarType.Float32).data<float>().ToArray(), GCHandleType.Pinned)).ToList();
        Tensor Tern(int i)
        {
            var args = new object?[] { xs[i], weights[i], null, null, null };
            if (!(bool)tryLinear.Invoke(null, args)!) throw new InvalidOperationException("TryLinear declined");
            return (Tensor)args[4]!;
        }
        void Packed(int i)
        {
            var (n, k) = shapes[i];
            int half = n / 16; // blocks of 8 for the first thread
            float* x = (float*)wide[i].AddrOfPinnedObject();
            ushort* p = (ushort*)packed[i];
            Parallel.For(0, 2, t =>
            {
                int from = t == 0 ? 0 : half, to = t == 0 ? half : n / 8;
                if (m == 1) K.Outer1(n, k, x, p, acc, from, to); else K.Outer(m, n, k, x, p, acc, from, to);
            });
        }
        // Both against the fp32 product of the same bf16 values (Tern's output is rounded to bf16: one rounding).
        for (int i = 0; i < 5; i++)
        {
            var expected = xs[i].to(ScalarType.Float32).matmul(weights[i].to(ScalarType.Float32).t());
            using var ours = Tern(i);
            Packed(i);
            var (n, _) = shapes[i];
            var mine = torch.from_array(new ReadOnlySpan<float>(acc, m * n).ToArray()).view(m, n);
            Console.WriteLine($"m={m} {shapes[i].N}x{shapes[i].K}: max |Δ| Tern {(ours.to(ScalarType.Float32) - expected).abs().max().item<float>():E1}, packed {(mine - expected).abs().max().item<float>():E1}");
        }
        double Time(Action<int> product)
        {
            var watch = Stopwatch.StartNew();
            for (int rep = 0; rep < 10; rep++) for (int i = 0; i < shapes.Count; i++) product(i);
            return watch.Elapsed.TotalMilliseconds / 10;
        }
        Action<int> tern = i => Tern(i).Dispose(), outer = Packed;
        for (int i = 0; i < 20; i++) { Time(tern); Time(outer); }
        var ternMs = new List<double>(); var outerMs = new List<double>();
        for (int rep = 0; rep < 15; rep++) { ternMs.Add(Time(tern)); outerMs.Add(Time(outer)); }
        double Median(List<double> v) => v.Order().ElementAt(v.Count / 2);
        foreach (var h in wide) h.Free();
        Console.WriteLine($"rows {m}: Tern TryLinear {Median(ternMs):F3} ms, packed outer product {Median(outerMs):F3} ms ({Median(ternMs) / Median(outerMs):F2}x)");
    }
}

static unsafe ushort* Pack(Tensor weight)
{
    int n = (int)weight.size(0), k = (int)weight.size(1);
    // bf16 → fp32 is exact: its upper 16 bits are the bf16 bits.
    ushort[] w = weight.to(ScalarType.Float32).data<float>().ToArray().Select(v => (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16)).ToArray();
    ushort* p = (ushort*)NativeMemory.AlignedAlloc((nuint)(n * k * 2), 64);
    for (int b = 0; b < n / 8; b++) for (int i = 0; i < k; i++) for (int j = 0; j < 8; j++) p[((long)b * k + i) * 8 + j] = w[(long)(b * 8 + j) * k + i];
    return p;
}

static unsafe class K
{
    // One row of x over packed weights: four blocks of 8 neurons, k unrolled by two into separate sums (8 sums).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Outer1(int n, int k, float* x, ushort* packed, float* acc, int fromBlock, int toBlock)
    {
        int b = fromBlock;
        for (; b + 4 <= toBlock; b += 4)
        {
            ushort* p0 = packed + (long)b * k * 8, p1 = p0 + k * 8, p2 = p1 + k * 8, p3 = p2 + k * 8;
            Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default, d0 = default, d1 = default, d2 = default, d3 = default;
            int i = 0;
            for (; i + 2 <= k; i += 2)
            {
                if ((i & 3) == 0) { Sse.Prefetch1((byte*)(p0 + 4 * k * 8) + i * 16); Sse.Prefetch1((byte*)(p1 + 4 * k * 8) + i * 16); Sse.Prefetch1((byte*)(p2 + 4 * k * 8) + i * 16); Sse.Prefetch1((byte*)(p3 + 4 * k * 8) + i * 16); }
                var v = Vector256.Create(x[i]); var u = Vector256.Create(x[i + 1]);
                c0 = Fma.MultiplyAdd(W8(p0 + i * 8), v, c0); c1 = Fma.MultiplyAdd(W8(p1 + i * 8), v, c1); c2 = Fma.MultiplyAdd(W8(p2 + i * 8), v, c2); c3 = Fma.MultiplyAdd(W8(p3 + i * 8), v, c3);
                d0 = Fma.MultiplyAdd(W8(p0 + i * 8 + 8), u, d0); d1 = Fma.MultiplyAdd(W8(p1 + i * 8 + 8), u, d1); d2 = Fma.MultiplyAdd(W8(p2 + i * 8 + 8), u, d2); d3 = Fma.MultiplyAdd(W8(p3 + i * 8 + 8), u, d3);
            }
            (c0 + d0).Store(acc + b * 8); (c1 + d1).Store(acc + b * 8 + 8); (c2 + d2).Store(acc + b * 8 + 16); (c3 + d3).Store(acc + b * 8 + 24);
        }
        for (; b < toBlock; b++)
        {
            ushort* p0 = packed + (long)b * k * 8; Vector256<float> c0 = default;
            for (int i = 0; i < k; i++) c0 = Fma.MultiplyAdd(W8(p0 + i * 8), Vector256.Create(x[i]), c0);
            c0.Store(acc + b * 8);
        }
    }
    static Vector256<float> W8(ushort* p) => Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(p), 16).AsSingle();

    // Outer product over weights packed [n/8][k][8]: three blocks of 8 neurons against four rows of x, broadcasts of x; no sums across lanes.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Outer(int m, int n, int k, float* x, ushort* packed, float* acc, int fromBlock, int toBlock)
    {
        int b = fromBlock;
        for (; b + 3 <= toBlock; b += 3)
        {
            ushort* p0 = packed + (long)b * k * 8, p1 = p0 + k * 8, p2 = p1 + k * 8;
            for (int r = 0; r < m; r += 4)
            {
                float* x0 = x + r * k, x1 = x0 + k, x2 = x1 + k, x3 = x2 + k;
                Vector256<float> c00 = default, c01 = default, c02 = default, c10 = default, c11 = default, c12 = default,
                    c20 = default, c21 = default, c22 = default, c30 = default, c31 = default, c32 = default;
                for (int i = 0; i < k; i++)
                {
                    if ((i & 3) == 0 && r == 0) { Sse.Prefetch1((byte*)(p0 + 3 * k * 8) + i * 16); Sse.Prefetch1((byte*)(p1 + 3 * k * 8) + i * 16); Sse.Prefetch1((byte*)(p2 + 3 * k * 8) + i * 16); }
                    var w0 = W8(p0 + i * 8); var w1 = W8(p1 + i * 8); var w2 = W8(p2 + i * 8);
                    var v = Vector256.Create(x0[i]); c00 = Fma.MultiplyAdd(w0, v, c00); c01 = Fma.MultiplyAdd(w1, v, c01); c02 = Fma.MultiplyAdd(w2, v, c02);
                    v = Vector256.Create(x1[i]); c10 = Fma.MultiplyAdd(w0, v, c10); c11 = Fma.MultiplyAdd(w1, v, c11); c12 = Fma.MultiplyAdd(w2, v, c12);
                    v = Vector256.Create(x2[i]); c20 = Fma.MultiplyAdd(w0, v, c20); c21 = Fma.MultiplyAdd(w1, v, c21); c22 = Fma.MultiplyAdd(w2, v, c22);
                    v = Vector256.Create(x3[i]); c30 = Fma.MultiplyAdd(w0, v, c30); c31 = Fma.MultiplyAdd(w1, v, c31); c32 = Fma.MultiplyAdd(w2, v, c32);
                }
                float* o = acc + b * 8;
                c00.Store(o + r * n); c01.Store(o + r * n + 8); c02.Store(o + r * n + 16);
                c10.Store(o + (r + 1) * n); c11.Store(o + (r + 1) * n + 8); c12.Store(o + (r + 1) * n + 16);
                c20.Store(o + (r + 2) * n); c21.Store(o + (r + 2) * n + 8); c22.Store(o + (r + 2) * n + 16);
                c30.Store(o + (r + 3) * n); c31.Store(o + (r + 3) * n + 8); c32.Store(o + (r + 3) * n + 16);
            }
        }
        for (; b < toBlock; b++)
        {
            ushort* p0 = packed + (long)b * k * 8;
            for (int r = 0; r < m; r += 4)
            {
                float* x0 = x + r * k;
                Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default;
                for (int i = 0; i < k; i++)
                {
                    var w0 = W8(p0 + i * 8);
                    c0 = Fma.MultiplyAdd(w0, Vector256.Create(x0[i]), c0); c1 = Fma.MultiplyAdd(w0, Vector256.Create(x0[k + i]), c1);
                    c2 = Fma.MultiplyAdd(w0, Vector256.Create(x0[2 * k + i]), c2); c3 = Fma.MultiplyAdd(w0, Vector256.Create(x0[3 * k + i]), c3);
                }
                float* o = acc + b * 8;
                c0.Store(o + r * n); c1.Store(o + (r + 1) * n); c2.Store(o + (r + 2) * n); c3.Store(o + (r + 3) * n);
            }
        }
    }
}
