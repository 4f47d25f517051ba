using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Interop;

internal static unsafe partial class CpuKernels
{
    // Attention work (elements of K and V read) past which the heads split over the cores: a decode step's attention is small,
    // so it splits much earlier than the elementwise kernels (one layer of the default model at a 700-token context: 0.5M).
    const long ParallelAttentionWork = 1 << 17;

    /// <summary>
    /// Decode attention with every cached entry visible (no mask): q [B, Hkv, G, D] (G query heads per KV head; rows of D
    /// contiguous, any other strides: a view of the step's fused projection is read in place),
    /// keys and values [B, Hkv, T, D] with rows of D contiguous (a cache's view of its first T slots), softmax(q·kᵀ/√D)·v →
    /// [B, Hkv, G, D] in q's type, fp32 throughout and rounded once, as libtorch's flash kernel. Why not libtorch's: at one query
    /// its flash kernel multiplies through MKL's GEMV, which runs generic code on non-Intel CPUs, and threads through OpenMP
    /// beside the core team (a profile of the default model's batch-1 step on an AMD host: ~1 ms a step there). False where the
    /// shapes do not fit (then SDPA serves).
    /// </summary>
    public static bool TryDecodeAttention(Tensor q, Tensor keys, Tensor values, out Tensor output)
    {
        output = null!;
        if (!UsableView(q) || q.dim() != 4 || keys.dim() != 4 || values.dim() != 4 || keys.dtype != q.dtype || values.dtype != q.dtype) return false;
        long b = q.size(0), hkv = q.size(1), g = q.size(2), d = q.size(3), t = keys.size(2);
        bool Fits(Tensor kv) => kv.device_type == DeviceType.CPU && kv.size(0) == b && kv.size(1) == hkv && kv.size(2) == t
            && kv.size(3) == d && kv.stride(3) == 1 && kv.stride(2) == d; // rows of D contiguous: a cache's first T slots
        if (d % 8 != 0 || d > 256 || g > 16 || t < 1 || t > 1 << 14 || q.stride(3) != 1 || !Fits(keys) || !Fits(values)) return false;
        output = torch.empty(new[] { b, hkv, g, d }, q.dtype);
        var job = new DecodeAttentionJob
        {
            Q = Ptr(q), QueryBatch = q.stride(0), QueryHead = q.stride(1), QueryGroup = q.stride(2), K = Ptr(keys), V = Ptr(values), Y = Ptr(output), Heads = (int)hkv, Groups = (int)g, Dim = (int)d, Length = (int)t,
            KeyBatch = keys.stride(0), KeyHead = keys.stride(1), ValueBatch = values.stride(0), ValueHead = values.stride(1),
            Scale = 1f / MathF.Sqrt(d),
        };
        long rows = b * hkv, work = 2 * rows * t * d;
        if (q.dtype == ScalarType.BFloat16) Run<DecodeAttentionJob, Bf16>(ref job, rows, work, ParallelAttentionWork);
        else Run<DecodeAttentionJob, F32>(ref job, rows, work, ParallelAttentionWork);
        return true;
    }

    /// <summary>One (row, KV head) pair a job row: its G queries over its T keys and values.</summary>
    struct DecodeAttentionJob : IRowJob
    {
        public byte* Q, K, V, Y;
        public int Heads, Groups, Dim, Length;
        public long QueryBatch, QueryHead, QueryGroup, KeyBatch, KeyHead, ValueBatch, ValueHead;
        public float Scale;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Rows<T>(long from, long to) where T : struct, IElement
        {
            int d = Dim, n = Length, blocks = d / 16 * 16;
            float* scores = stackalloc float[n];
            float* acc = stackalloc float[d];
            float* wideQuery = stackalloc float[d];
            for (long r = from; r < to; r++)
            {
                long b = r / Heads, h = r % Heads;
                byte* k = K + (b * KeyBatch + h * KeyHead) * T.Size, v = V + (b * ValueBatch + h * ValueHead) * T.Size;
                // The next pair's keys and values, prefetched into L2 alongside this pair's work: in a decode step the weights
                // streamed since the last layer have pushed them out of cache, and each pair's short streams (24 KB of keys for
                // the default model at a 192-token context) leave the hardware prefetcher little to learn from. Default model,
                // bf16, 8 rows at prompt 128 + 128 tokens: step 4.615 → 4.528 ms (medians of 6 alternating runs; one row level).
                byte* nextK = null, nextV = null;
                if (r + 1 < to)
                {
                    long nb = (r + 1) / Heads, nh = (r + 1) % Heads;
                    nextK = K + (nb * KeyBatch + nh * KeyHead) * T.Size;
                    nextV = V + (nb * ValueBatch + nh * ValueHead) * T.Size;
                }
                for (int g = 0; g < Groups; g++)
                {
                    long qRow = b * QueryBatch + h * QueryHead + g * QueryGroup, yRow = (r * Groups + g) * d;
                    // q in the keys' block order (Load16), fp32 read in place.
                    float* q = wideQuery;
                    if (typeof(T) == typeof(F32)) q = (float*)Q + qRow;
                    else WidenInBlockOrder((ushort*)Q + qRow, wideQuery, d);
                    // Scores eight keys at a time, each its own sum, summed across lanes together (three rounds of pairwise
                    // adds for eight keys where one key's sum across lanes took about as many).
                    var maxes = Vector256.Create(float.NegativeInfinity);
                    var scale = Vector256.Create(Scale);
                    int j = 0;
                    for (; j + 8 <= n; j += 8)
                    {
                        if (nextK != null && g == Groups - 1) PrefetchLines(nextK + (long)j * d * T.Size, 8L * d * T.Size);
                        var s = Vector256.Multiply(EightScores<T>(q, k + (long)j * d * T.Size, d, blocks), scale);
                        s.Store(scores + j);
                        maxes = Vector256.MaxNative(maxes, s); // a NaN score still makes every output NaN below
                    }
                    float max = MaxAcrossLanes(maxes);
                    for (; j < n; j++)
                    {
                        scores[j] = Vector256.Sum(Products<T>(q, k + (long)j * d * T.Size, d, blocks)) * Scale;
                        max = MathF.Max(max, scores[j]);
                    }
                    // exp(s − max) eight scores at a time (scalar exps here and in SiLU were ~9% of the default model's batch-8 step).
                    var top = Vector256.Create(max);
                    var sums = Vector256<float>.Zero;
                    int e = 0;
                    for (; e + 8 <= n; e += 8)
                    {
                        var p = Vector256.Exp(Vector256.Load(scores + e) - top);
                        p.Store(scores + e);
                        sums += p;
                    }
                    float sum = Vector256.Sum(sums);
                    for (; e < n; e++) sum += scores[e] = MathF.Exp(scores[e] - max);
                    var inverse = Vector256.Create(1f / sum);
                    // 64 output columns at a time in registers, keys in order, values widened sixteen at a time (in their block
                    // order, put back in order once at the end). With eight keys' scores summed across lanes at once, this made
                    // the default model's 8-row bf16 attention at a 192-token context 0.58 → 0.41 ms a step (its eight layers
                    // alone, alternating in one process; one row 0.107 → 0.088; fp32, bound by memory, 1.27 → 1.22) and its whole
                    // step 3.53 → 3.36 ms.
                    int c = 0;
                    for (; c + 64 <= d; c += 64)
                    {
                        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
                        byte* column = v + (long)c * T.Size;
                        for (j = 0; j < n; j++)
                        {
                            if (nextV != null && g == Groups - 1 && c == 0) PrefetchLines(nextV + (long)j * d * T.Size, (long)d * T.Size);
                            var p = Vector256.Create(scores[j]);
                            byte* row = column + (long)j * d * T.Size;
                            // Each pair consumed before the next load: sixteen ymm registers hold the eight sums and what feeds them.
                            var (v0, v1) = T.Load16(row, 0); a0 = Vector256.FusedMultiplyAdd(p, v0, a0); a1 = Vector256.FusedMultiplyAdd(p, v1, a1);
                            (v0, v1) = T.Load16(row, 16); a2 = Vector256.FusedMultiplyAdd(p, v0, a2); a3 = Vector256.FusedMultiplyAdd(p, v1, a3);
                            (v0, v1) = T.Load16(row, 32); a4 = Vector256.FusedMultiplyAdd(p, v0, a4); a5 = Vector256.FusedMultiplyAdd(p, v1, a5);
                            (v0, v1) = T.Load16(row, 48); a6 = Vector256.FusedMultiplyAdd(p, v0, a6); a7 = Vector256.FusedMultiplyAdd(p, v1, a7);
                        }
                        T.Store16(a0 * inverse, a1 * inverse, Y, yRow + c);
                        T.Store16(a2 * inverse, a3 * inverse, Y, yRow + c + 16);
                        T.Store16(a4 * inverse, a5 * inverse, Y, yRow + c + 32);
                        T.Store16(a6 * inverse, a7 * inverse, Y, yRow + c + 48);
                    }
                    if (c == d) continue;
                    for (int i = c; i < d; i += 8) Vector256<float>.Zero.Store(acc + i);
                    for (j = 0; j < n; j++)
                    {
                        var p = Vector256.Create(scores[j]);
                        for (int i = c; i < d; i += 8)
                            Vector256.FusedMultiplyAdd(p, T.Load8(v, (long)j * d + i), Vector256.Load(acc + i)).Store(acc + i);
                    }
                    for (int i = c; i < d; i += 8) T.Store8(Vector256.Load(acc + i) * inverse, Y, yRow + i);
                }
            }
        }

        /// <summary>One key's q · k products, summed over D within each lane (q in the key's block order).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector256<float> Products<T>(float* q, byte* key, int d, int blocks) where T : struct, IElement
        {
            var dot = Vector256<float>.Zero;
            int i = 0;
            for (; i < blocks; i += 16)
            {
                var (k0, k1) = T.Load16(key, i);
                dot = Vector256.FusedMultiplyAdd(Vector256.Load(q + i), k0, dot);
                dot = Vector256.FusedMultiplyAdd(Vector256.Load(q + i + 8), k1, dot);
            }
            for (; i < d; i += 8) dot = Vector256.FusedMultiplyAdd(Vector256.Load(q + i), T.Load8(key, i), dot);
            return dot;
        }

        /// <summary>q · k for eight consecutive keys of D elements (q in the keys' block order), as one vector of eight sums.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector256<float> EightScores<T>(float* q, byte* keys, int d, int blocks) where T : struct, IElement
        {
            Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
            int i = 0;
            for (; i < blocks; i += 16)
            {
                var q0 = Vector256.Load(q + i);
                var q1 = Vector256.Load(q + i + 8);
                var (k0, k1) = T.Load16(keys, i); s0 = Vector256.FusedMultiplyAdd(q0, k0, s0); s0 = Vector256.FusedMultiplyAdd(q1, k1, s0);
                (k0, k1) = T.Load16(keys, d + i); s1 = Vector256.FusedMultiplyAdd(q0, k0, s1); s1 = Vector256.FusedMultiplyAdd(q1, k1, s1);
                (k0, k1) = T.Load16(keys, 2 * d + i); s2 = Vector256.FusedMultiplyAdd(q0, k0, s2); s2 = Vector256.FusedMultiplyAdd(q1, k1, s2);
                (k0, k1) = T.Load16(keys, 3 * d + i); s3 = Vector256.FusedMultiplyAdd(q0, k0, s3); s3 = Vector256.FusedMultiplyAdd(q1, k1, s3);
                (k0, k1) = T.Load16(keys, 4 * d + i); s4 = Vector256.FusedMultiplyAdd(q0, k0, s4); s4 = Vector256.FusedMultiplyAdd(q1, k1, s4);
                (k0, k1) = T.Load16(keys, 5 * d + i); s5 = Vector256.FusedMultiplyAdd(q0, k0, s5); s5 = Vector256.FusedMultiplyAdd(q1, k1, s5);
                (k0, k1) = T.Load16(keys, 6 * d + i); s6 = Vector256.FusedMultiplyAdd(q0, k0, s6); s6 = Vector256.FusedMultiplyAdd(q1, k1, s6);
                (k0, k1) = T.Load16(keys, 7 * d + i); s7 = Vector256.FusedMultiplyAdd(q0, k0, s7); s7 = Vector256.FusedMultiplyAdd(q1, k1, s7);
            }
            for (; i < d; i += 8)
            {
                var q0 = Vector256.Load(q + i);
                s0 = Vector256.FusedMultiplyAdd(q0, T.Load8(keys, i), s0);
                s1 = Vector256.FusedMultiplyAdd(q0, T.Load8(keys, d + i), s1);
                s2 = Vector256.FusedMultiplyAdd(q0, T.Load8(keys, 2 * d + i), s2);
                s3 = Vector256.FusedMultiplyAdd(q0, T.Load8(keys, 3 * d + i), s3);
                s4 = Vector256.FusedMultiplyAdd(q0, T.Load8(keys, 4 * d + i), s4);
                s5 = Vector256.FusedMultiplyAdd(q0, T.Load8(keys, 5 * d + i), s5);
                s6 = Vector256.FusedMultiplyAdd(q0, T.Load8(keys, 6 * d + i), s6);
                s7 = Vector256.FusedMultiplyAdd(q0, T.Load8(keys, 7 * d + i), s7);
            }
            return SumAcrossLanes(s0, s1, s2, s3, s4, s5, s6, s7);
        }
    }

    /// <summary>Prefetches [start, start + bytes) into L2, a 64-byte line at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void PrefetchLines(byte* start, long bytes)
    {
        if (!System.Runtime.Intrinsics.X86.Sse.IsSupported) return;
        for (long o = 0; o < bytes; o += 64) System.Runtime.Intrinsics.X86.Sse.Prefetch1(start + o);
    }

    /// <summary>Eight vectors' sums across their lanes as one vector (lane i: the sum of vector i).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> SumAcrossLanes(Vector256<float> s0, Vector256<float> s1, Vector256<float> s2, Vector256<float> s3,
        Vector256<float> s4, Vector256<float> s5, Vector256<float> s6, Vector256<float> s7)
    {
        if (!System.Runtime.Intrinsics.X86.Avx.IsSupported)
            return Vector256.Create(Vector256.Sum(s0), Vector256.Sum(s1), Vector256.Sum(s2), Vector256.Sum(s3),
                Vector256.Sum(s4), Vector256.Sum(s5), Vector256.Sum(s6), Vector256.Sum(s7));
        // Pairwise adds within 128-bit lanes: [Σ0 Σ1 Σ2 Σ3 | Σ0 Σ1 Σ2 Σ3] of the low and high halves, then the halves added.
        var low = System.Runtime.Intrinsics.X86.Avx.HorizontalAdd(
            System.Runtime.Intrinsics.X86.Avx.HorizontalAdd(s0, s1), System.Runtime.Intrinsics.X86.Avx.HorizontalAdd(s2, s3));
        var high = System.Runtime.Intrinsics.X86.Avx.HorizontalAdd(
            System.Runtime.Intrinsics.X86.Avx.HorizontalAdd(s4, s5), System.Runtime.Intrinsics.X86.Avx.HorizontalAdd(s6, s7));
        return System.Runtime.Intrinsics.X86.Avx.Permute2x128(low, high, 0x20) + System.Runtime.Intrinsics.X86.Avx.Permute2x128(low, high, 0x31);
    }

    /// <summary>The largest of a vector's eight lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float MaxAcrossLanes(Vector256<float> v)
    {
        var m = Vector128.MaxNative(v.GetLower(), v.GetUpper());
        m = Vector128.MaxNative(m, Vector128.Shuffle(m, Vector128.Create(2, 3, 0, 1)));
        return MathF.Max(m[0], m[1]);
    }
}
