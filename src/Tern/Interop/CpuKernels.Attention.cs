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
            int d = Dim, n = Length;
            float* scores = stackalloc float[n];
            float* acc = stackalloc float[d];
            for (long r = from; r < to; r++)
            {
                long b = r / Heads, h = r % Heads;
                byte* k = K + (b * KeyBatch + h * KeyHead) * T.Size, v = V + (b * ValueBatch + h * ValueHead) * T.Size;
                for (int g = 0; g < Groups; g++)
                {
                    long qRow = b * QueryBatch + h * QueryHead + g * QueryGroup, yRow = (r * Groups + g) * d;
                    // Four keys at a time, each its own sum (one key's FMAs form a chain of D / 8 latencies; four chains overlap).
                    int j = 0;
                    for (; j + 4 <= n; j += 4)
                    {
                        Vector256<float> d0 = default, d1 = default, d2 = default, d3 = default;
                        long k0 = (long)j * d;
                        for (int i = 0; i < d; i += 8)
                        {
                            var qv = T.Load8(Q, qRow + i);
                            d0 = Vector256.FusedMultiplyAdd(qv, T.Load8(k, k0 + i), d0);
                            d1 = Vector256.FusedMultiplyAdd(qv, T.Load8(k, k0 + d + i), d1);
                            d2 = Vector256.FusedMultiplyAdd(qv, T.Load8(k, k0 + 2 * d + i), d2);
                            d3 = Vector256.FusedMultiplyAdd(qv, T.Load8(k, k0 + 3 * d + i), d3);
                        }
                        scores[j] = Vector256.Sum(d0) * Scale;
                        scores[j + 1] = Vector256.Sum(d1) * Scale;
                        scores[j + 2] = Vector256.Sum(d2) * Scale;
                        scores[j + 3] = Vector256.Sum(d3) * Scale;
                    }
                    for (; j < n; j++)
                    {
                        var dot = Vector256<float>.Zero;
                        for (int i = 0; i < d; i += 8) dot = Vector256.FusedMultiplyAdd(T.Load8(Q, qRow + i), T.Load8(k, (long)j * d + i), dot);
                        scores[j] = Vector256.Sum(dot) * Scale;
                    }
                    float max = float.NegativeInfinity;
                    for (j = 0; j < n; j++) max = MathF.Max(max, scores[j]);
                    // exp(s − max) eight scores at a time (scalar exps here and in SiLU were ~9% of the default model's batch-8 step).
                    var maxes = Vector256.Create(max);
                    var sums = Vector256<float>.Zero;
                    int e = 0;
                    for (; e + 8 <= n; e += 8)
                    {
                        var p = Vector256.Exp(Vector256.Load(scores + e) - maxes);
                        p.Store(scores + e);
                        sums += p;
                    }
                    float sum = Vector256.Sum(sums);
                    for (; e < n; e++) sum += scores[e] = MathF.Exp(scores[e] - max);
                    var inverse = Vector256.Create(1f / sum);
                    if (d % 64 == 0)
                    {
                        // 64 output columns at a time in registers, keys in order (the same sums as below, without a store and
                        // reload between keys).
                        for (int i = 0; i < d; i += 64)
                        {
                            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
                            for (j = 0; j < n; j++)
                            {
                                var p = Vector256.Create(scores[j]);
                                long row = (long)j * d + i;
                                a0 = Vector256.FusedMultiplyAdd(p, T.Load8(v, row), a0);
                                a1 = Vector256.FusedMultiplyAdd(p, T.Load8(v, row + 8), a1);
                                a2 = Vector256.FusedMultiplyAdd(p, T.Load8(v, row + 16), a2);
                                a3 = Vector256.FusedMultiplyAdd(p, T.Load8(v, row + 24), a3);
                                a4 = Vector256.FusedMultiplyAdd(p, T.Load8(v, row + 32), a4);
                                a5 = Vector256.FusedMultiplyAdd(p, T.Load8(v, row + 40), a5);
                                a6 = Vector256.FusedMultiplyAdd(p, T.Load8(v, row + 48), a6);
                                a7 = Vector256.FusedMultiplyAdd(p, T.Load8(v, row + 56), a7);
                            }
                            T.Store8(a0 * inverse, Y, yRow + i); T.Store8(a1 * inverse, Y, yRow + i + 8);
                            T.Store8(a2 * inverse, Y, yRow + i + 16); T.Store8(a3 * inverse, Y, yRow + i + 24);
                            T.Store8(a4 * inverse, Y, yRow + i + 32); T.Store8(a5 * inverse, Y, yRow + i + 40);
                            T.Store8(a6 * inverse, Y, yRow + i + 48); T.Store8(a7 * inverse, Y, yRow + i + 56);
                        }
                        continue;
                    }
                    for (int i = 0; i < d; i += 8) Vector256<float>.Zero.Store(acc + i);
                    for (j = 0; j < n; j++)
                    {
                        var p = Vector256.Create(scores[j]);
                        for (int i = 0; i < d; i += 8)
                            Vector256.FusedMultiplyAdd(p, T.Load8(v, (long)j * d + i), Vector256.Load(acc + i)).Store(acc + i);
                    }
                    for (int i = 0; i < d; i += 8) T.Store8(Vector256.Load(acc + i) * inverse, Y, yRow + i);
                }
            }
        }
    }
}
