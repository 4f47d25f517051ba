// Issue 19 item 4: the default model's bf16 products at 8 rows of x in two weight layouts, on this machine's CPU (an experiment,
// not Tern's code path): the row-major kernel Tern runs (a pair of weight rows against four rows of x, sums across lanes at
// the end; replicated here, and Tern's own CpuKernels.TryLinear through reflection beside it) against an outer product over
// weights packed [n/8][k][8] (three blocks of 8 neurons against four rows of x, x broadcast, no sums across lanes). Same
// shapes as models/default (8 layers of qkv 1152×384, o 384×384, gate|up 1408×384, down 384×704, and the 8192×384 head),
// random weights, every product in turn (28.7 MB: streamed), medians of 15 × 10 passes, one and two threads; and one row of x
// (Tern's path against a one-row outer product over the same packed weights).
//   dotnet run -c Release --project bench/cpu/ProductLayouts
using System.Runtime.InteropServices;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Diagnostics;
unsafe
{
    // default model shapes, bf16: per layer qkv 1152x384, o 384x384, gateup 1408x384, down 384x704; x8; head 8192x384
    var shapes = new List<(int n, int k)>();
    for (int l = 0; l < 8; l++) { shapes.Add((1152, 384)); shapes.Add((384, 384)); shapes.Add((1408, 384)); shapes.Add((384, 704)); }
    shapes.Add((8192, 384));
    int m = 8;
    var rnd = new Random(1);
    var rows = new List<(IntPtr w, IntPtr wp, int n, int k)>();
    long bytes = 0;
    foreach (var (n, k) in shapes)
    {
        ushort* w = (ushort*)NativeMemory.AlignedAlloc((nuint)(n * k * 2), 64);
        ushort* wp = (ushort*)NativeMemory.AlignedAlloc((nuint)(n * k * 2), 64);
        for (long i = 0; i < (long)n * k; i++) w[i] = (ushort)(BitConverter.SingleToInt32Bits((float)(rnd.NextDouble() - 0.5)) >> 16);
        // packed [n/8][k][8]
        for (int b = 0; b < n / 8; b++) for (int kk = 0; kk < k; kk++) for (int j = 0; j < 8; j++) wp[((long)b * k + kk) * 8 + j] = w[(long)(b * 8 + j) * k + kk];
        rows.Add(((IntPtr)w, (IntPtr)wp, n, k)); bytes += (long)n * k * 2;
    }
    Console.WriteLine($"weights {bytes / 1e6:F1} MB");
    int maxK = 704, maxN = 8192;
    float* x = (float*)NativeMemory.AlignedAlloc((nuint)(m * maxK * 4), 64);
    float* xb = (float*)NativeMemory.AlignedAlloc((nuint)(m * maxK * 4), 64); // block order for kernel A
    for (int i = 0; i < m * maxK; i++) x[i] = (float)(rnd.NextDouble() - 0.5);
    float* ya = (float*)NativeMemory.AlignedAlloc((nuint)(m * maxN * 4), 64), yb = (float*)NativeMemory.AlignedAlloc((nuint)(m * maxN * 4), 64);
    // check correctness on the first few shapes
    foreach (var (w, wp, n, k) in rows.Take(5))
    {
        BlockOrder(x, xb, m, k);
        K.PairRows(m, n, k, xb, (ushort*)w, ya, 0, n);
        K.Outer(m, n, k, x, (ushort*)wp, yb, 0, n / 8);
        double maxd = 0; for (int i = 0; i < m * n; i++) maxd = Math.Max(maxd, Math.Abs(ya[i] - yb[i]));
        Console.WriteLine($"{n}x{k}: max diff {maxd:E2}");
    }
    void All(bool outer, int threads)
    {
        foreach (var (w, wp, n, k) in rows)
        {
            if (threads == 1) { if (outer) K.Outer(m, n, k, x, (ushort*)wp, yb, 0, n / 8); else K.PairRows(m, n, k, xb, (ushort*)w, ya, 0, n); }
            else
            {
                int half = n / 16 * 8; IntPtr pw = w, ppw = wp;
                Parallel.For(0, 2, t => { if (outer) K.Outer(m, n, k, x, (ushort*)ppw, yb, t == 0 ? 0 : half / 8, t == 0 ? half / 8 : n / 8); else K.PairRows(m, n, k, xb, (ushort*)pw, ya, t == 0 ? 0 : half, t == 0 ? half : n); });
            }
        }
    }
    // One row: Tern's TryLinear against the packed one-row outer product, two threads.
    {
        var tryLinear = typeof(Tern.Runtime.ModelDType).Assembly.GetType("Tern.Interop.CpuKernels")!.GetMethod("TryLinear")!;
        using var noGrad = TorchSharp.torch.no_grad();
        var ws = rows.Select(r => TorchSharp.torch.randn(new long[] { r.n, r.k }).to(TorchSharp.torch.ScalarType.BFloat16)).ToList();
        var xs = rows.Select(r => TorchSharp.torch.randn(new long[] { 1, r.k }).to(TorchSharp.torch.ScalarType.BFloat16)).ToList();
        double Tern1()
        {
            var sw = Stopwatch.StartNew();
            for (int rep = 0; rep < 10; rep++)
                for (int i = 0; i < ws.Count; i++)
                {
                    var args = new object?[] { xs[i], ws[i], null, null, null };
                    if (!(bool)tryLinear.Invoke(null, args)!) throw new Exception("no kernel");
                    ((TorchSharp.torch.Tensor)args[4]!).Dispose();
                }
            return sw.Elapsed.TotalMilliseconds / 10;
        }
        double Outer1All()
        {
            var sw = Stopwatch.StartNew();
            for (int rep = 0; rep < 10; rep++)
                foreach (var (w, wp, n, k) in rows)
                {
                    int half = n / 16 * 8; IntPtr ppw = wp;
                    Parallel.For(0, 2, t => K.Outer1(n, k, x, (ushort*)ppw, yb, t == 0 ? 0 : half / 8, t == 0 ? half / 8 : n / 8));
                }
            return sw.Elapsed.TotalMilliseconds / 10;
        }
        // check
        { var (w, wp, n, k) = rows[0]; K.PairRows(4, n, k, xb, (ushort*)w, ya, 0, n); BlockOrder(x, xb, 1, k); K.Outer1(n, k, x, (ushort*)wp, yb, 0, n / 8);
          K.Outer(4, n, k, x, (ushort*)wp, ya, 0, n / 8); double md = 0; for (int i = 0; i < n; i++) md = Math.Max(md, Math.Abs(ya[i] - yb[i])); Console.WriteLine($"one-row check: {md:E2}"); }
        for (int i = 0; i < 20; i++) { Tern1(); Outer1All(); }
        var tt = new List<double>(); var to = new List<double>();
        for (int rep = 0; rep < 15; rep++) { tt.Add(Tern1()); to.Add(Outer1All()); }
        tt.Sort(); to.Sort();
        Console.WriteLine($"one row: Tern TryLinear (2 cores) {tt[7]:F3} ms, packed outer (Parallel.For, 2) {to[7]:F3} ms ({tt[7] / to[7]:F2}x)");
    }
    // Tern's own path: CpuKernels.TryLinear (internal) through reflection, bf16 tensors, 8 rows, both cores (its CoreTeam).
    {
        var tryLinear = typeof(Tern.Runtime.ModelDType).Assembly.GetType("Tern.Interop.CpuKernels")!.GetMethod("TryLinear")!;
        using var noGrad = TorchSharp.torch.no_grad();
        var ws = rows.Select(r => TorchSharp.torch.randn(new long[] { r.n, r.k }).to(TorchSharp.torch.ScalarType.BFloat16)).ToList();
        var xs = rows.Select(r => TorchSharp.torch.randn(new long[] { m, r.k }).to(TorchSharp.torch.ScalarType.BFloat16)).ToList();
        double Tern()
        {
            var sw = Stopwatch.StartNew();
            for (int rep = 0; rep < 10; rep++)
                for (int i = 0; i < ws.Count; i++)
                {
                    var args = new object?[] { xs[i], ws[i], null, null, null };
                    if (!(bool)tryLinear.Invoke(null, args)!) throw new Exception("no kernel");
                    ((TorchSharp.torch.Tensor)args[4]!).Dispose();
                }
            return sw.Elapsed.TotalMilliseconds / 10;
        }
        for (int i = 0; i < 20; i++) { Tern(); All(true, 2); }
        var tt = new List<double>(); var to = new List<double>();
        for (int rep = 0; rep < 15; rep++) { tt.Add(Tern()); var sw = Stopwatch.StartNew(); for (int i = 0; i < 10; i++) All(true, 2); to.Add(sw.Elapsed.TotalMilliseconds / 10); }
        tt.Sort(); to.Sort();
        Console.WriteLine($"Tern TryLinear (2 cores) {tt[7]:F3} ms, outer (Parallel.For, 2) {to[7]:F3} ms ({tt[7] / to[7]:F2}x)");
    }
    foreach (int threads in new[] { 1, 2 })
    {
        for (int i = 0; i < 20; i++) { All(false, threads); All(true, threads); }
        var ta = new List<double>(); var tb = new List<double>();
        for (int rep = 0; rep < 15; rep++)
        {
            var sw = Stopwatch.StartNew(); for (int i = 0; i < 10; i++) All(false, threads); ta.Add(sw.Elapsed.TotalMilliseconds / 10);
            sw.Restart(); for (int i = 0; i < 10; i++) All(true, threads); tb.Add(sw.Elapsed.TotalMilliseconds / 10);
        }
        ta.Sort(); tb.Sort();
        Console.WriteLine($"threads {threads}: pair-rows {ta[7]:F3} ms, outer {tb[7]:F3} ms ({ta[7] / tb[7]:F2}x)");
    }
}
static unsafe void BlockOrder(float* x, float* xb, int m, int k)
{
    for (int r = 0; r < m; r++) for (int i = 0; i + 16 <= k; i += 16)
        for (int j = 0; j < 4; j++) { xb[r * k + i + j] = x[r * k + i + j]; xb[r * k + i + 4 + j] = x[r * k + i + 8 + j]; xb[r * k + i + 8 + j] = x[r * k + i + 4 + j]; xb[r * k + i + 12 + j] = x[r * k + i + 12 + j]; }
}
static unsafe class K
{
    // Tern's current kernel shape: a pair of weight rows against four rows of x, 16 columns an iteration (Load16 unpack order).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PairRows(int m, int n, int k, float* x, ushort* weight, float* acc, int from, int to)
    {
        for (int j = from; j < to; j += 2)
        {
            ushort* w = weight + (long)j * k, w1 = w + k;
            for (int r = 0; r < m; r += 4)
            {
                float* x0 = x + r * k, x1 = x0 + k, x2 = x1 + k, x3 = x2 + k;
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
                for (int i = 0; i < k; i += 16)
                {
                    Sse.Prefetch1((byte*)(w + 4 * k) + i * 2);
                    var raw = Vector256.Load(w + i); var wv = Avx2.UnpackLow(Vector256<ushort>.Zero, raw).AsSingle(); var wh = Avx2.UnpackHigh(Vector256<ushort>.Zero, raw).AsSingle();
                    var raw1 = Vector256.Load(w1 + i); var uv = Avx2.UnpackLow(Vector256<ushort>.Zero, raw1).AsSingle(); var uh = Avx2.UnpackHigh(Vector256<ushort>.Zero, raw1).AsSingle();
                    var v = Vector256.Load(x0 + i); a0 = Fma.MultiplyAdd(wv, v, a0); b0 = Fma.MultiplyAdd(uv, v, b0);
                    v = Vector256.Load(x1 + i); a1 = Fma.MultiplyAdd(wv, v, a1); b1 = Fma.MultiplyAdd(uv, v, b1);
                    v = Vector256.Load(x2 + i); a2 = Fma.MultiplyAdd(wv, v, a2); b2 = Fma.MultiplyAdd(uv, v, b2);
                    v = Vector256.Load(x3 + i); a3 = Fma.MultiplyAdd(wv, v, a3); b3 = Fma.MultiplyAdd(uv, v, b3);
                    v = Vector256.Load(x0 + i + 8); a0 = Fma.MultiplyAdd(wh, v, a0); b0 = Fma.MultiplyAdd(uh, v, b0);
                    v = Vector256.Load(x1 + i + 8); a1 = Fma.MultiplyAdd(wh, v, a1); b1 = Fma.MultiplyAdd(uh, v, b1);
                    v = Vector256.Load(x2 + i + 8); a2 = Fma.MultiplyAdd(wh, v, a2); b2 = Fma.MultiplyAdd(uh, v, b2);
                    v = Vector256.Load(x3 + i + 8); a3 = Fma.MultiplyAdd(wh, v, a3); b3 = Fma.MultiplyAdd(uh, v, b3);
                }
                acc[r * n + j] = Vector256.Sum(a0); acc[(r + 1) * n + j] = Vector256.Sum(a1); acc[(r + 2) * n + j] = Vector256.Sum(a2); acc[(r + 3) * n + j] = Vector256.Sum(a3);
                acc[r * n + j + 1] = Vector256.Sum(b0); acc[(r + 1) * n + j + 1] = Vector256.Sum(b1); acc[(r + 2) * n + j + 1] = Vector256.Sum(b2); acc[(r + 3) * n + j + 1] = Vector256.Sum(b3);
            }
        }
    }


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
