// DejaVu's sparse products (Liu et al. 2023, §4.3: fused index-gather + GEMV), compiled after fused.cu in one NVRTC program
// (its load/store/unpack helpers; still no headers). Every kernel reads only the weight rows or columns the step selected,
// with 16-byte loads and fp32 accumulation, and rounds where the dense path rounds (the linear map, bias included, then the
// residual add). Selections are int64 [tokens, k], one set per token.

// Elements of T in one 16-byte load.
template <typename T> struct Vec { static const int N = 16 / (int)sizeof(T); };

// Σ_i W[row, i]·x[i] over one warp's lanes (W row-major, K·sizeof(T) a multiple of 16 bytes), not yet reduced across lanes.
template <typename T>
__device__ __forceinline__ float warp_dot(const T* __restrict__ wrow, const uint4* __restrict__ xv, int K, int lane)
{
    const int V = Vec<T>::N;
    const uint4* w = reinterpret_cast<const uint4*>(wrow);
    int chunks = K / V;
    float acc = 0.0f, fa[8], fb[8];
    int i = lane;
    for (; i + 96 < chunks; i += 128) // four loads of W in flight per lane, as fused.cu's gemv
    {
        uint4 a0 = w[i], a1 = w[i + 32], a2 = w[i + 64], a3 = w[i + 96];
        uint4 b0 = __ldg(xv + i), b1 = __ldg(xv + i + 32), b2 = __ldg(xv + i + 64), b3 = __ldg(xv + i + 96);
        unpack_vec(a0, fa, (T*)0); unpack_vec(b0, fb, (T*)0); for (int j = 0; j < V; j++) acc += fa[j] * fb[j];
        unpack_vec(a1, fa, (T*)0); unpack_vec(b1, fb, (T*)0); for (int j = 0; j < V; j++) acc += fa[j] * fb[j];
        unpack_vec(a2, fa, (T*)0); unpack_vec(b2, fb, (T*)0); for (int j = 0; j < V; j++) acc += fa[j] * fb[j];
        unpack_vec(a3, fa, (T*)0); unpack_vec(b3, fb, (T*)0); for (int j = 0; j < V; j++) acc += fa[j] * fb[j];
    }
    for (; i < chunks; i += 32)
    {
        unpack_vec(w[i], fa, (T*)0); unpack_vec(__ldg(xv + i), fb, (T*)0);
        for (int j = 0; j < V; j++) acc += fa[j] * fb[j];
    }
    return acc;
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Up-projection over the selected rows (DejaVu's stage 1): y[t, j] = act(x_t·W[r]ᵀ + b[r]) with r = rows[t, j], W row-major
// [out, K] so each selected neuron is one contiguous row. kind < 0: no activation. up > 0 (a gated MLP, [gate | up] stacked):
// row r is the gate and row r + up its up-projection, y = round(act(round(g)))·round(u) as Activation.Gated rounds.
// One warp per (token, selected row).
template <typename T>
__device__ void gather_rows(T* __restrict__ y, const T* __restrict__ W, const T* __restrict__ x, const T* __restrict__ bias,
                            const long long* __restrict__ rows, long long tokens, int k, int K, int kind, long long up)
{
    long long item = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5; // token · k + j
    int lane = threadIdx.x & 31;
    if (item >= tokens * k) return;
    long long token = item / k, r = rows[item];
    const uint4* xv = reinterpret_cast<const uint4*>(x + token * K);
    float g = warp_sum(warp_dot(W + r * K, xv, K, lane));
    float u = up > 0 ? warp_sum(warp_dot(W + (r + up) * K, xv, K, lane)) : 0.0f;
    if (lane != 0) return;
    if (bias) g += load(bias[r]);
    g = round_to<T>(g);
    float v;
    if (up > 0)
    {
        if (bias) u += load(bias[r + up]);
        v = round_to<T>(activate(g, kind)) * round_to<T>(u);
    }
    else v = kind >= 0 ? activate(g, kind) : g;
    y[item] = store<T>(v);
}

// Down-projection over the selected inputs (DejaVu's stage 2), first half: partial[t, s, n] = Σ_{j ∈ split s} a[t, j]·Wt[c, n]
// with c = cols[t, j] and Wt = Wᵀ stored row-major [in, N], so each selected neuron's output weights are one contiguous row.
// Grid (⌈N / (V·threads)⌉, splits, tokens); each thread owns V consecutive outputs and keeps four rows' loads in flight.
// Partials per split, summed by columns_finish in a fixed order: deterministic, unlike atomics.
template <typename T>
__device__ void gather_columns(float* __restrict__ partial, const T* __restrict__ Wt, const T* __restrict__ a,
                               const long long* __restrict__ cols, int k, int N, int perSplit)
{
    const int V = Vec<T>::N;
    int n0 = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    int split = blockIdx.y, splits = gridDim.y;
    long long token = blockIdx.z;
    if (n0 >= N) return;
    const T* at = a + token * k;
    const long long* ct = cols + token * k;
    int j = split * perSplit, end = min(k, j + perSplit);
    float acc[8] = { 0, 0, 0, 0, 0, 0, 0, 0 }, f[8];
    for (; j + 3 < end; j += 4)
    {
        uint4 w0 = *reinterpret_cast<const uint4*>(Wt + ct[j] * N + n0), w1 = *reinterpret_cast<const uint4*>(Wt + ct[j + 1] * N + n0);
        uint4 w2 = *reinterpret_cast<const uint4*>(Wt + ct[j + 2] * N + n0), w3 = *reinterpret_cast<const uint4*>(Wt + ct[j + 3] * N + n0);
        float a0 = load(at[j]), a1 = load(at[j + 1]), a2 = load(at[j + 2]), a3 = load(at[j + 3]);
        unpack_vec(w0, f, (T*)0); for (int e = 0; e < V; e++) acc[e] += a0 * f[e];
        unpack_vec(w1, f, (T*)0); for (int e = 0; e < V; e++) acc[e] += a1 * f[e];
        unpack_vec(w2, f, (T*)0); for (int e = 0; e < V; e++) acc[e] += a2 * f[e];
        unpack_vec(w3, f, (T*)0); for (int e = 0; e < V; e++) acc[e] += a3 * f[e];
    }
    for (; j < end; j++)
    {
        unpack_vec(*reinterpret_cast<const uint4*>(Wt + ct[j] * N + n0), f, (T*)0);
        float aj = load(at[j]);
        for (int e = 0; e < V; e++) acc[e] += aj * f[e];
    }
    float* out = partial + ((token * splits + split) * (long long)N + n0);
    for (int e = 0; e < V; e++) out[e] = acc[e];
}

// Second half: y[t, n] = residual[t, n] + round(Σ_s partial[t, s, n] + b[n]).
template <typename T>
__device__ void columns_finish(T* __restrict__ y, const float* __restrict__ partial, const T* __restrict__ bias,
                               const T* __restrict__ residual, int splits, int N, long long tokens)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < tokens * N; i += (long long)gridDim.x * blockDim.x)
    {
        long long token = i / N;
        int n = (int)(i - token * N);
        const float* p = partial + token * splits * (long long)N + n;
        float v = 0.0f;
        for (int s = 0; s < splits; s++) v += p[(long long)s * N];
        if (bias) v += load(bias[n]);
        v = round_to<T>(v);
        if (residual) v += load(residual[i]);
        y[i] = store<T>(v);
    }
}

// Output projection over kept heads (DejaVu's head-sparse out_proj): y[t, n] = residual[t, n] + round(Σ_c a[t, c]·W[n, cols[t, c]]
// + b[n]) with W row-major [N, K] and the kc selected columns in aligned runs of V (a head's block of head_dim columns is
// contiguous in each row of W: read in place, no transposed copy). One warp per (token, output row).
template <typename T>
__device__ void gather_column_runs(T* __restrict__ y, const T* __restrict__ W, const T* __restrict__ a, const long long* __restrict__ cols,
                                   const T* __restrict__ bias, const T* __restrict__ residual, int kc, int N, int K, long long tokens)
{
    const int V = Vec<T>::N;
    long long item = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5; // token · N + n
    int lane = threadIdx.x & 31;
    if (item >= tokens * N) return;
    long long token = item / N;
    int n = (int)(item - token * N);
    const T* wrow = W + (long long)n * K;
    const uint4* av = reinterpret_cast<const uint4*>(a + token * kc);
    const long long* ct = cols + token * kc;
    int chunks = kc / V;
    float acc = 0.0f, fa[8], fb[8];
    int i = lane;
    for (; i + 96 < chunks; i += 128) // four loads of W in flight per lane, as warp_dot (two read it at 1.9 TB/s on an H100)
    {
        long long c0 = ct[i * V], c1 = ct[(i + 32) * V], c2 = ct[(i + 64) * V], c3 = ct[(i + 96) * V];
        uint4 w0 = *reinterpret_cast<const uint4*>(wrow + c0), w1 = *reinterpret_cast<const uint4*>(wrow + c1);
        uint4 w2 = *reinterpret_cast<const uint4*>(wrow + c2), w3 = *reinterpret_cast<const uint4*>(wrow + c3);
        uint4 x0 = __ldg(av + i), x1 = __ldg(av + i + 32), x2 = __ldg(av + i + 64), x3 = __ldg(av + i + 96);
        unpack_vec(w0, fa, (T*)0); unpack_vec(x0, fb, (T*)0); for (int e = 0; e < V; e++) acc += fa[e] * fb[e];
        unpack_vec(w1, fa, (T*)0); unpack_vec(x1, fb, (T*)0); for (int e = 0; e < V; e++) acc += fa[e] * fb[e];
        unpack_vec(w2, fa, (T*)0); unpack_vec(x2, fb, (T*)0); for (int e = 0; e < V; e++) acc += fa[e] * fb[e];
        unpack_vec(w3, fa, (T*)0); unpack_vec(x3, fb, (T*)0); for (int e = 0; e < V; e++) acc += fa[e] * fb[e];
    }
    for (; i < chunks; i += 32)
    {
        unpack_vec(*reinterpret_cast<const uint4*>(wrow + ct[i * V]), fa, (T*)0); unpack_vec(__ldg(av + i), fb, (T*)0);
        for (int e = 0; e < V; e++) acc += fa[e] * fb[e];
    }
    acc = warp_sum(acc);
    if (lane != 0) return;
    if (bias) acc += load(bias[n]);
    float v = round_to<T>(acc);
    if (residual) v += load(residual[item]);
    y[item] = store<T>(v);
}

#define INSTANTIATE_SPARSE(T, S)                                                                                                      \
    extern "C" __global__ void gather_rows_##S(T* y, const T* W, const T* x, const T* b, const long long* rows, long long tokens, int k, \
        int K, int kind, long long up) { gather_rows<T>(y, W, x, b, rows, tokens, k, K, kind, up); }                                   \
    extern "C" __global__ void gather_columns_##S(float* partial, const T* Wt, const T* a, const long long* cols, int k, int N,          \
        int perSplit) { gather_columns<T>(partial, Wt, a, cols, k, N, perSplit); }                                                     \
    extern "C" __global__ void columns_finish_##S(T* y, const float* partial, const T* b, const T* r, int splits, int N,                \
        long long tokens) { columns_finish<T>(y, partial, b, r, splits, N, tokens); }                                                  \
    extern "C" __global__ void gather_column_runs_##S(T* y, const T* W, const T* a, const long long* cols, const T* b, const T* r,     \
        int kc, int N, int K, long long tokens) { gather_column_runs<T>(y, W, a, cols, b, r, kc, N, K, tokens); }
INSTANTIATE_SPARSE(float, f32)
INSTANTIATE_SPARSE(bf16, bf16)
INSTANTIATE_SPARSE(f16, f16)
