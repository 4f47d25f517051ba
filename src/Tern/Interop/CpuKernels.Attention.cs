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
                    float max = float.NegativeInfinity;
                    for (int j = 0; j < n; j++)
                    {
                        var dot = Vector256<float>.Zero;
                        for (int i = 0; i < d; i += 8) dot = Vector256.FusedMultiplyAdd(T.Load8(Q, qRow + i), T.Load8(k, (long)j * d + i), dot);
                        float s = Vector256.Sum(dot) * Scale;
                        scores[j] = s;
                        if (s > max) max = s;
                    }
                    // exp(s − max) eight scores at a time (a scalar exp a score was ~⅕ of a batch-8 step at a 256 context).
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
                    for (int i = 0; i < d; i += 8) Vector256<float>.Zero.Store(acc + i);
                    for (int j = 0; j < n; j++)
                    {
                        var p = Vector256.Create(scores[j]);
                        for (int i = 0; i < d; i += 8)
                            Vector256.FusedMultiplyAdd(p, T.Load8(v, (long)j * d + i), Vector256.Load(acc + i)).Store(acc + i);
                    }
                    var inverse = Vector256.Create(1f / sum);
                    for (int i = 0; i < d; i += 8) T.Store8(Vector256.Load(acc + i) * inverse, Y, yRow + i);
                }
            }
        }
    }
}
