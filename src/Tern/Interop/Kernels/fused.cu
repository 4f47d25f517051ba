// Fused kernels for the decode step, compiled at run time with NVRTC (no headers: bf16/fp16 conversions are written out).
// Each computes in fp32 and rounds where transformers' composite ops round, so results match the unfused path.
// Element types: float (f32), bfloat16 (bf16) and IEEE half (f16), stored as 16-bit integers.

#define NEG_INF (__int_as_float(0xff800000))  // NVRTC has no <math.h> macros

struct bf16 { unsigned short v; };
struct f16 { unsigned short v; };

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(bf16 x) { return __uint_as_float(((unsigned)x.v) << 16); }
__device__ __forceinline__ float load(f16 x) { float f; asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(x.v)); return f; }

template <typename T> __device__ __forceinline__ T store(float f);
template <> __device__ __forceinline__ float store<float>(float f) { return f; }
template <> __device__ __forceinline__ bf16 store<bf16>(float f)
{
    unsigned u = __float_as_uint(f);
    bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) { r.v = (unsigned short)((u >> 16) | 0x40u); return r; } // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                                              // round to nearest even
    r.v = (unsigned short)(u >> 16);
    return r;
}
template <> __device__ __forceinline__ f16 store<f16>(float f) { f16 r; asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(r.v) : "f"(f)); return r; }
template <typename T> __device__ __forceinline__ float round_to(float f) { return load(store<T>(f)); }

// Block-wide sum (and max below); the leading barrier lets calls follow each other on the same scratch array.
__device__ __forceinline__ float block_sum(float v, float* shared)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < warps ? shared[threadIdx.x] : 0.0f;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    return shared[0];
}

// RMSNorm (one block per row, at most 8 elements per thread, kept in registers so x is read once): y = w · round(x /
// sqrt(mean(x²) + eps)), statistics in fp32.
template <typename T>
__device__ void rms_norm(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ w, int cols, float eps)
{
    __shared__ float shared[32];
    const T* row = x + (long long)blockIdx.x * cols;
    T* out = y + (long long)blockIdx.x * cols;
    float v[8], wv[8], sum = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; e++)
    {
        int i = threadIdx.x + e * blockDim.x;
        v[e] = i < cols ? load(row[i]) : 0.0f;
        wv[e] = i < cols ? load(w[i]) : 0.0f;
        sum += v[e] * v[e];
    }
    float inv = rsqrtf(block_sum(sum, shared) / cols + eps);
#pragma unroll
    for (int e = 0; e < 8; e++)
    {
        int i = threadIdx.x + e * blockDim.x;
        if (i < cols) out[i] = store<T>(wv[e] * round_to<T>(v[e] * inv));
    }
}

// LayerNorm (one block per row, at most 8 elements per thread, kept in registers so x is read once): y = (x − mean) ·
// rsqrt(var + eps) · w + b, mean and (biased) variance in fp32 over the row, one rounding at the end — as torch's layer_norm.
// Its own kernel because torch's runs a one-row (decode) LayerNorm of OPT-30B's 7,168 columns at ~14 µs, a tenth of a layer.
template <typename T>
__device__ void layer_norm(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, int cols, float eps)
{
    __shared__ float shared[32];
    const T* row = x + (long long)blockIdx.x * cols;
    T* out = y + (long long)blockIdx.x * cols;
    float v[8], sum = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; e++)
    {
        int i = threadIdx.x + e * blockDim.x;
        v[e] = i < cols ? load(row[i]) : 0.0f;
        sum += v[e];
    }
    float mean = block_sum(sum, shared) / cols, squares = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; e++)
    {
        int i = threadIdx.x + e * blockDim.x;
        float d = i < cols ? v[e] - mean : 0.0f;
        squares += d * d;
    }
    float inv = rsqrtf(block_sum(squares, shared) / cols + eps);
#pragma unroll
    for (int e = 0; e < 8; e++)
    {
        int i = threadIdx.x + e * blockDim.x;
        if (i < cols) out[i] = store<T>(load(w[i]) * (inv * (v[e] - mean)) + (b ? load(b[i]) : 0.0f)); // torch's order of operations
    }
}

// Rotary embedding, "rotate half" layout: x'[i] = x[i]·cos[i] + x[(i + r/2) mod r]·sin±[i] for i < r (the sign of rotate_half
// lives in the table), one head of `in` into `out` (the same head in place; into another, dims r … headDim − 1 are copied) at
// position p (< 0, padding: position 0), by the block's threads. Each thread reads both halves of a pair before writing either.
template <typename T>
__device__ __forceinline__ void rotate_head(T* out, const T* in, long long p, int rotary, int headDim, const T* __restrict__ cosTable,
                                            const T* __restrict__ sinTable)
{
    if (p < 0) p = 0;
    const T* c = cosTable + p * rotary;
    const T* s = sinTable + p * rotary;
    int half = rotary / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x)
    {
        float a = load(in[i]), b = load(in[i + half]);
        out[i] = store<T>(a * load(c[i]) + b * load(s[i]));
        out[i + half] = store<T>(b * load(c[i + half]) + a * load(s[i + half]));
    }
    if (out != in)
        for (int i = rotary + threadIdx.x; i < headDim; i += blockDim.x) out[i] = in[i];
}

// Rotary embedding in place on the first `heads` heads of each token row of a fused qkv buffer. One block per (token, head), so
// even a single token spreads over many SMs.
template <typename T>
__device__ void rotary(T* qkv, long long rowStride, int heads, int headDim, int rotary, const long long* positions,
                       const T* __restrict__ cosTable, const T* __restrict__ sinTable)
{
    int token = blockIdx.x / heads, h = blockIdx.x - token * heads;
    T* x = qkv + (long long)token * rowStride + (long long)h * headDim;
    rotate_head(x, x, positions[token], rotary, headDim, cosTable, sinTable);
}

// StreamingLLM's decode step (keys stored unrotated, attended at their cache index), at each row's position: the queries q
// [rows, heads, headDim] rotated in place, and each new key x [rows, kvHeads, headDim] rotated into attended [rows, kvHeads, cap,
// headDim] at slot, x left unrotated for the cache (dims past `rotary` copied) — one kernel where rotating the queries, rotating
// the keys in place and copying them into the slot took three. Rows of q and x lie qRow and xRow elements apart (views of a fused
// qkv buffer, one token a row). One block per (row, head) over heads + kvHeads heads.
template <typename T>
__device__ void rotary_into(T* attended, T* q, long long qRow, int heads, const T* x, long long xRow, int kvHeads, int headDim,
                            int rotary, const long long* positions, const T* __restrict__ cosTable, const T* __restrict__ sinTable,
                            const long long* slot, int cap)
{
    int all = heads + kvHeads, row = blockIdx.x / all, h = blockIdx.x - row * all;
    if (h < heads)
    {
        T* query = q + (long long)row * qRow + (long long)h * headDim;
        rotate_head(query, query, positions[row], rotary, headDim, cosTable, sinTable);
        return;
    }
    h -= heads;
    const T* in = x + (long long)row * xRow + (long long)h * headDim;
    T* out = attended + (((long long)row * kvHeads + h) * cap + slot[0]) * headDim;
    rotate_head(out, in, positions[row], rotary, headDim, cosTable, sinTable);
}

// StreamingLLM after a shift: the keys of slots [start, start + count), stored unrotated in keys [rows, heads, cap, headDim], rotated
// at their own slot index into attended (the same layout; dims past `rotary` copied) — one kernel where a rotated copy took six.
// One block per (row, head, slot).
template <typename T>
__device__ void rotary_slots(T* attended, const T* keys, int cap, int headDim, int rotary, int start, int count,
                             const T* __restrict__ cosTable, const T* __restrict__ sinTable)
{
    long long rowHead = blockIdx.x / count;
    int slot = start + (int)(blockIdx.x - rowHead * count);
    long long cell = (rowHead * cap + slot) * headDim;
    rotate_head(attended + cell, keys + cell, slot, rotary, headDim, cosTable, sinTable);
}

// StreamingLLM's shift in place: slots [from, from + count) of each (row, head) of data [rows · heads, cap, vecs] (16-byte vectors)
// moved down to [to, to + count), to < from, read and written once where a copy through a temporary took two passes more. The
// slot `to + j` that a thread writes is slot `from + j - e` (e = from - to), which the same thread read before, since each thread
// walks one vector lane of the slots j ≡ r (mod e) upward: every batch of loads precedes its stores (eight loads in flight).
// Grid: x over min(e, count) · vecs threads, y over rows · heads.
extern "C" __global__ void shift_slots(uint4* data, int vecs, int cap, int from, int to, int count)
{
    const int e = from - to, Batch = 8;
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= min(e, count) * vecs) return;
    int r = t / vecs;
    uint4* base = data + (long long)blockIdx.y * cap * vecs + (t - r * vecs);
    for (int j = r; j < count; j += Batch * e)
    {
        uint4 moved[Batch];
#pragma unroll
        for (int u = 0; u < Batch; u++)
            if (j + u * e < count) moved[u] = base[(long long)(from + j + u * e) * vecs];
#pragma unroll
        for (int u = 0; u < Batch; u++)
            if (j + u * e < count) base[(long long)(to + j + u * e) * vecs] = moved[u];
    }
}

__device__ __forceinline__ float activate(float g, int kind)
{
    switch (kind)
    {
        case 0: return g / (1.0f + __expf(-g));                                                   // silu
        case 1: return g > 0.0f ? g : 0.0f;                                                        // relu
        case 2: return 0.5f * g * (1.0f + erff(g * 0.70710678118654752f));                         // gelu
        default: return 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g))); // gelu (tanh)
    }
}

// Gated MLP activation: y[r, i] = round(act(gate[r, i])) · up[r, i], with [gate | up] = gateUp[r, 0:2n].
template <typename T>
__device__ void gated(T* __restrict__ y, const T* __restrict__ gateUp, long long rows, int n, int kind)
{
    long long total = rows * n;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (long long)gridDim.x * blockDim.x)
    {
        long long r = k / n;
        int i = (int)(k - r * n);
        const T* g = gateUp + r * 2 * n;
        y[k] = store<T>(round_to<T>(activate(load(g[i]), kind)) * load(g[n + i]));
    }
}

// Unpacks 8 16-bit values from a 16-byte load into floats.
__device__ __forceinline__ void unpack8(uint4 v, float* out, bf16*)
{
    unsigned w[4] = { v.x, v.y, v.z, v.w };
    for (int i = 0; i < 4; i++) { out[2 * i] = __uint_as_float(w[i] << 16); out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u); }
}
__device__ __forceinline__ void unpack8(uint4 v, float* out, f16*)
{
    unsigned w[4] = { v.x, v.y, v.z, v.w };
    for (int i = 0; i < 4; i++)
    {
        f16 lo, hi;
        lo.v = (unsigned short)(w[i] & 0xffffu);
        hi.v = (unsigned short)(w[i] >> 16);
        out[2 * i] = load(lo);
        out[2 * i + 1] = load(hi);
    }
}

// One-row matrix-vector product for decode steps: y[n] = Σ_k W[n, k]·x[k] (+ bias[n]) (+ residual[n]); W row-major [N, K],
// K a multiple of 8. One warp per output row, 16-byte loads, fp32 accumulation, one rounding at the end. Reading W at
// close to the memory bandwidth is the whole job at batch 1.
template <typename T>
__device__ void gemv(T* __restrict__ y, const T* __restrict__ W, const T* __restrict__ x, const T* __restrict__ bias,
                     const T* __restrict__ residual, int N, int K)
{
    int row = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= N) return;
    const uint4* w = reinterpret_cast<const uint4*>(W + (long long)row * K);
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    int chunks = K >> 3;
    float acc = 0.0f;
    int i = lane;
    for (; i + 96 < chunks; i += 128)
    {
        uint4 a0 = w[i], a1 = w[i + 32], a2 = w[i + 64], a3 = w[i + 96];
        uint4 b0 = __ldg(xv + i), b1 = __ldg(xv + i + 32), b2 = __ldg(xv + i + 64), b3 = __ldg(xv + i + 96);
        float fa[8], fb[8];
        unpack8(a0, fa, (T*)0); unpack8(b0, fb, (T*)0); for (int j = 0; j < 8; j++) acc += fa[j] * fb[j];
        unpack8(a1, fa, (T*)0); unpack8(b1, fb, (T*)0); for (int j = 0; j < 8; j++) acc += fa[j] * fb[j];
        unpack8(a2, fa, (T*)0); unpack8(b2, fb, (T*)0); for (int j = 0; j < 8; j++) acc += fa[j] * fb[j];
        unpack8(a3, fa, (T*)0); unpack8(b3, fb, (T*)0); for (int j = 0; j < 8; j++) acc += fa[j] * fb[j];
    }
    for (; i < chunks; i += 32)
    {
        float fa[8], fb[8];
        unpack8(w[i], fa, (T*)0); unpack8(__ldg(xv + i), fb, (T*)0);
        for (int j = 0; j < 8; j++) acc += fa[j] * fb[j];
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0)
    {
        // As transformers: the linear map (bias added in its fp32 epilogue) is rounded, then the residual is added.
        float v = acc;
        if (bias) v += load(bias[row]);
        v = round_to<T>(v);
        if (residual) v = load(residual[row]) + v;
        y[row] = store<T>(v);
    }
}

__device__ __forceinline__ void unpack_vec(uint4 v, float* out, float*)
{
    out[0] = __uint_as_float(v.x); out[1] = __uint_as_float(v.y); out[2] = __uint_as_float(v.z); out[3] = __uint_as_float(v.w);
}
__device__ __forceinline__ void unpack_vec(uint4 v, float* out, bf16* t) { unpack8(v, out, t); }
__device__ __forceinline__ void unpack_vec(uint4 v, float* out, f16* t) { unpack8(v, out, t); }

// Appends one token per sequence to a layer's cache at the slot held on the device (one for every row, slotStride 0, or each
// row's own, slotStride 1): keys and values [B, Hkv, Cap, D] from source views (last dimension contiguous, given batch and
// head strides), positions [B, Hkv, Cap] from pos[B]. One block per (sequence, KV head).
template <typename T>
__device__ void cache_append(T* keys, T* values, long long* cachePos, const T* k, const T* v, long long kBatch, long long kHead,
                             long long vBatch, long long vHead, const long long* pos, const long long* slot, int slotStride, int kvHeads,
                             int cap, int headDim)
{
    int b = blockIdx.x / kvHeads, h = blockIdx.x - b * kvHeads;
    long long s = slot[b * slotStride];
    long long cell = (long long)(b * kvHeads + h) * cap + s;
    const T* ks = k + b * kBatch + h * kHead;
    const T* vs = v + b * vBatch + h * vHead;
    for (int d = threadIdx.x; d < headDim; d += blockDim.x)
    {
        keys[cell * headDim + d] = ks[d];
        values[cell * headDim + d] = vs[d];
    }
    if (threadIdx.x == 0) cachePos[cell] = pos[b];
}

__device__ __forceinline__ float block_max(float v, float* shared)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < warps ? shared[threadIdx.x] : NEG_INF;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    return shared[0];
}

// Decode attention, split over the cache (flash-decoding, with fewer, longer splits as FlashInfer does it): block (b·H + h,
// split) scores query h of sequence b against its `chunk` keys and leaves its unnormalised output, max and exp-sum for
// attn_combine. It walks the chunk in tiles of ATTN_ROUNDS keys a thread group (16 keys of 128 16-bit dims) with an online
// softmax — the running max m and sum l, the accumulators rescaled by exp(m_old − m_new) when the max grows (FlashAttention-2's
// recurrence) — and keeps loads in flight through the compute (below). The host sizes chunks by the cache's capacity so that
// the grid is about one wave (against 64-key splits that loaded keys, then values, each block once: the 7B step at a 4k cache
// 7.23 → 6.54 ms on an H100).
// A key at original position kp is visible to a query at p when kp ≥ 0 and kp ≤ p and (no window or p − kp < window); padding
// queries (p < 0) see every occupied slot. Masked keys (and those past `slots`, read clamped) weigh exactly 0, and a tile with
// nothing visible leaves m, l and the accumulators as they were, so a step over a prefix of the slots gives the bits of a static
// step over all of them. With headIndex (DejaVu's kept heads, [B·heads]) block b·heads + j attends query j of sequence b as head
// headIndex[b·heads + j] (q and the output hold the kept heads only); query head h reads KV head h / queryGroups. Only the first
// `slots` slots of each head are read; a head's slots start headStride slots after the previous head's (the cache's capacity).
// 128 threads; keys and values are read with 16-byte loads: a row of D elements is spread over D/VEC lanes (VEC = 16 bytes of T).
#define ATTN_THREADS 128
#define ATTN_ROUNDS 2 // keys a thread group reads a tile
#define ATTN_STAGES 4 // tiles a thread has copied into shared memory: the one it reads and three in flight
// One block of decode attention (attn_split): where its head's keys, values and positions start, its query
// dims, which 16-byte piece of which keys of a tile this thread reads, and the online softmax's state (running max m, this
// thread group's sum l and its VEC output dims).
template <typename T>
struct AttnBlock
{
    static constexpr int VEC = 16 / (int)sizeof(T);
    const uint4* K;
    const uint4* V;
    const long long* kp;
    long long p;
    int slots, window, rowVecs, sub, group, groups, k0, tiles;
    float qv[8], m, l, acc[8];

    __device__ AttnBlock(const T* q, long long qBatch, long long qHead, const T* keys, const T* values, const long long* cachePos,
                         const long long* qpos, const long long* headIndex, int heads, int queryGroups, int kvHeads, int slots_,
                         int headStride, int headDim, int window_, float scale, int chunk)
        : slots(slots_), window(window_), m(NEG_INF), l(0.0f)
    {
        int bh = blockIdx.x, b = bh / heads, j = bh - b * heads, hk = (headIndex ? (int)headIndex[bh] : j) / queryGroups;
        p = qpos[b];
        long long base = (long long)(b * kvHeads + hk) * headStride;
        K = reinterpret_cast<const uint4*>(keys + base * headDim);
        V = reinterpret_cast<const uint4*>(values + base * headDim);
        kp = cachePos + base;
        rowVecs = headDim / VEC;              // 16-byte pieces per row; a power of two from 4 to 32
        sub = threadIdx.x % rowVecs;          // which piece of a row this thread reads
        group = threadIdx.x / rowVecs;        // which keys: group, group + groups, ... of each tile
        groups = ATTN_THREADS / rowVecs;
        k0 = blockIdx.y * chunk;
        tiles = (min(k0 + chunk, slots) - k0 + groups * ATTN_ROUNDS - 1) / (groups * ATTN_ROUNDS);
        const T* qrow = q + b * qBatch + j * qHead + sub * VEC;
        for (int e = 0; e < VEC; e++) { qv[e] = load(qrow[e]) * scale; acc[e] = 0.0f; }
    }

    // This thread's piece of round r of tile t (past `slots`: the last slot's, masked when scored).
    __device__ long long piece(int t, int r) const
    {
        return (long long)min(k0 + t * groups * ATTN_ROUNDS + group + r * groups, slots - 1) * rowVecs + sub;
    }

    // Tile t's scores into sc (−inf where a key is not visible); staged: the tile's positions copied ahead, [ATTN_ROUNDS][ATTN_THREADS / 4].
    __device__ void score(const uint4 (&kr)[ATTN_ROUNDS], float* sc, int t, const long long* staged)
    {
#pragma unroll
        for (int r = 0; r < ATTN_ROUNDS; r++)
        {
            float f[8];
            unpack_vec(kr[r], f, (T*)0);
            float dot = 0.0f;
            for (int e = 0; e < VEC; e++) dot += qv[e] * f[e];
            for (int o = 1; o < rowVecs; o <<= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
            if (sub == 0)
            {
                int key = k0 + t * groups * ATTN_ROUNDS + group + r * groups;
                long long kpos = key >= slots ? -1 : staged[r * (ATTN_THREADS / 4) + group];
                bool visible = kpos >= 0 && (p < 0 || (kpos <= p && (window == 0 || p - kpos < window)));
                sc[group + r * groups] = visible ? dot : NEG_INF;
            }
        }
    }

    // After the barrier that publishes sc: the online softmax over the tile's scores and its values.
    __device__ void accumulate(const uint4 (&vr)[ATTN_ROUNDS], const float* sc)
    {
        float tileMax = NEG_INF;
        for (int i = 0; i < groups * ATTN_ROUNDS; i++) tileMax = fmaxf(tileMax, sc[i]);
        float mNew = fmaxf(m, tileMax);
        float alpha = mNew == m ? 1.0f : __expf(m - mNew); // exp(−inf) = 0 while nothing was visible
        l *= alpha;
        for (int e = 0; e < VEC; e++) acc[e] *= alpha;
#pragma unroll
        for (int r = 0; r < ATTN_ROUNDS; r++)
        {
            float s = sc[group + r * groups];
            float w = s > NEG_INF ? __expf(s - mNew) : 0.0f;
            float f[8];
            unpack_vec(vr[r], f, (T*)0);
            for (int e = 0; e < VEC; e++) acc[e] += w * f[e];
            l += w;
        }
        m = mNew;
    }

    // The groups' outputs and sums added up: the block's unnormalised output, max and exp-sum for attn_combine. scratch: shared
    // memory of ATTN_THREADS · 9 floats that no thread uses any more (the tiles' staging buffers).
    __device__ void finish(float* partOut, float* partMax, float* partSum, int headDim, float* scratch)
    {
        float* partial = scratch;                        // per thread, its VEC output dims (VEC ≤ 8)
        float* partialSum = scratch + ATTN_THREADS * 8;
        __syncthreads();                                 // every thread is done with the staging buffers
        for (int e = 0; e < VEC; e++) partial[threadIdx.x * 8 + e] = acc[e];
        partialSum[threadIdx.x] = l; // every thread of a group holds its group's sum
        __syncthreads();
        long long cell = (long long)blockIdx.x * gridDim.y + blockIdx.y;
        for (int d = threadIdx.x; d < headDim; d += blockDim.x)
        {
            int owner = d / VEC, e = d % VEC; // threads owner, owner + rowVecs, ... hold dim d
            float total = 0.0f;
            for (int g = 0; g < groups; g++) total += partial[(owner + g * rowVecs) * 8 + e];
            partOut[cell * headDim + d] = total;
        }
        if (threadIdx.x == 0)
        {
            float sum = 0.0f;
            for (int g = 0; g < groups; g++) sum += partialSum[g * rowVecs];
            partMax[cell] = m;
            partSum[cell] = sum;
        }
    }
};

// Loads in flight: each thread copies its own 16-byte pieces of keys and values ATTN_STAGES − 1 tiles ahead into shared
// memory (cp.async on sm_80 and later, plain loads and stores before), so that three tiles stay in flight a block without
// holding them in registers (against one tile ahead in registers: the H100's 7B step at a 4k cache 6.381 → 6.326 ms, level
// at 512). A thread reads back only the pieces it copied: waiting for its own copies is enough. The first lane of each thread
// group also copies its keys' positions ahead, so that scoring a tile waits on no global load of its own (against reading each
// key's position as it is scored: the H100's 7B step at a 4k cache 6.452 / 6.455 → 6.410 / 6.413 ms, at 512 5.639 → 5.590).
__device__ __forceinline__ void copy16(uint4* shared, const uint4* global)
{
#if __CUDA_ARCH__ >= 800
    unsigned address = (unsigned)__cvta_generic_to_shared(shared);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(address), "l"(global));
#else
    *shared = *global;
#endif
}
__device__ __forceinline__ void copy8(long long* shared, const long long* global)
{
#if __CUDA_ARCH__ >= 800
    unsigned address = (unsigned)__cvta_generic_to_shared(shared);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" :: "r"(address), "l"(global));
#else
    *shared = *global;
#endif
}
__device__ __forceinline__ void copy_commit()
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void copy_wait_all_but_newest()
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" :: "n"(ATTN_STAGES - 1)); // tile t landed; t + 1 … t + 3 may be in flight
#endif
}
template <typename T>
__device__ void attn_split(float* partOut, float* partMax, float* partSum, const T* q, long long qBatch, long long qHead,
                           const T* keys, const T* values, const long long* cachePos, const long long* qpos, const long long* headIndex,
                           int heads, int queryGroups, int kvHeads, int slots, int headStride, int headDim, int window, float scale, int chunk)
{
    __shared__ uint4 stageK[ATTN_STAGES][ATTN_ROUNDS][ATTN_THREADS], stageV[ATTN_STAGES][ATTN_ROUNDS][ATTN_THREADS];
    __shared__ float score[2][ATTN_THREADS / 4 * ATTN_ROUNDS];
    __shared__ long long stagePos[ATTN_STAGES][ATTN_ROUNDS][ATTN_THREADS / 4]; // [r][group]: the first lane of each group copies
    AttnBlock<T> a(q, qBatch, qHead, keys, values, cachePos, qpos, headIndex, heads, queryGroups, kvHeads, slots, headStride, headDim,
                   window, scale, chunk);
    // Tile u's pieces of this thread into stage u % ATTN_STAGES; one commit group a tile, empty past the last, so that after
    // issuing tile t + ATTN_STAGES − 1, waiting for all groups but the newest ATTN_STAGES − 1 means "up to tile t".
    auto issue = [&](int u) {
        if (u < a.tiles)
#pragma unroll
            for (int r = 0; r < ATTN_ROUNDS; r++)
            {
                copy16(&stageK[u % ATTN_STAGES][r][threadIdx.x], a.K + a.piece(u, r));
                copy16(&stageV[u % ATTN_STAGES][r][threadIdx.x], a.V + a.piece(u, r));
                if (a.sub == 0)
                    copy8(&stagePos[u % ATTN_STAGES][r][a.group], a.kp + a.piece(u, r) / a.rowVecs);
            }
        copy_commit();
    };
    for (int u = 0; u < ATTN_STAGES - 1; u++) issue(u);
    for (int t = 0; t < a.tiles; t++)
    {
        issue(t + ATTN_STAGES - 1);
        copy_wait_all_but_newest();
        int stage = t % ATTN_STAGES;
        uint4 kr[ATTN_ROUNDS], vr[ATTN_ROUNDS];
#pragma unroll
        for (int r = 0; r < ATTN_ROUNDS; r++) { kr[r] = stageK[stage][r][threadIdx.x]; vr[r] = stageV[stage][r][threadIdx.x]; }
        float* sc = score[t & 1];
        a.score(kr, sc, t, &stagePos[stage][0][0]);
        __syncthreads();
        a.accumulate(vr, sc);
    }
    a.finish(partOut, partMax, partSum, headDim, reinterpret_cast<float*>(&stageK[0][0][0]));
}

// Combines the splits of each (sequence, head) into softmax(q·kᵀ)·v, written as out[b, h·D + d]. Up to 1024 splits.
template <typename T>
__device__ void attn_combine(T* out, const float* partOut, const float* partMax, const float* partSum, int splits, int headDim)
{
    __shared__ float weight[1024];
    __shared__ float reduction[32];
    int bh = blockIdx.x;
    const float* pm = partMax + (long long)bh * splits;
    const float* ps = partSum + (long long)bh * splits;
    float M = NEG_INF;
    for (int s = threadIdx.x; s < splits; s += blockDim.x) M = fmaxf(M, pm[s]);
    M = block_max(M, reduction);
    float den = 0.0f;
    for (int s = threadIdx.x; s < splits; s += blockDim.x)
    {
        float w = ps[s] > 0.0f ? __expf(pm[s] - M) : 0.0f;
        weight[s] = w;
        den += w * ps[s];
    }
    den = block_sum(den, reduction); // its barriers also publish weight[]
    const float* po = partOut + (long long)bh * splits * headDim;
    for (int d = threadIdx.x; d < headDim; d += blockDim.x)
    {
        float num = 0.0f;
#pragma unroll 8
        for (int s = 0; s < splits; s++) num += weight[s] * po[(long long)s * headDim + d];
        out[(long long)bh * headDim + d] = store<T>(den > 0.0f ? num / den : 0.0f); // a row with no visible key (a free pool row) gets 0
    }
}

#define INSTANTIATE_GEMV(T, S) \
    extern "C" __global__ void gemv_##S(T* y, const T* W, const T* x, const T* b, const T* r, int N, int K) { gemv<T>(y, W, x, b, r, N, K); }
INSTANTIATE_GEMV(bf16, bf16)
INSTANTIATE_GEMV(f16, f16)

#define INSTANTIATE(T, S)                                                                                             \
    extern "C" __global__ void rms_norm_##S(T* y, const T* x, const T* w, int cols, float eps) { rms_norm<T>(y, x, w, cols, eps); } \
    extern "C" __global__ void layer_norm_##S(T* y, const T* x, const T* w, const T* b, int cols, float eps)                             \
        { layer_norm<T>(y, x, w, b, cols, eps); }                                                                                   \
    extern "C" __global__ void rotary_##S(T* qkv, long long rowStride, int heads, int headDim, int rot, const long long* pos,      \
                                          const T* c, const T* s) { rotary<T>(qkv, rowStride, heads, headDim, rot, pos, c, s); }    \
    extern "C" __global__ void rotary_into_##S(T* a, T* q, long long qRow, int heads, const T* x, long long xRow, int kvHeads,           \
        int headDim, int rot, const long long* pos, const T* c, const T* s, const long long* slot, int cap)                              \
        { rotary_into<T>(a, q, qRow, heads, x, xRow, kvHeads, headDim, rot, pos, c, s, slot, cap); }                                      \
    extern "C" __global__ void rotary_slots_##S(T* a, const T* keys, int cap, int headDim, int rot, int start, int count, const T* c,      \
        const T* s) { rotary_slots<T>(a, keys, cap, headDim, rot, start, count, c, s); }                                                  \
    extern "C" __global__ void gated_##S(T* y, const T* gu, long long rows, int n, int kind) { gated<T>(y, gu, rows, n, kind); }  \
    extern "C" __global__ void cache_append_##S(T* keys, T* values, long long* cp, const T* k, const T* v, long long kb, long long kh, \
        long long vb, long long vh, const long long* pos, const long long* slot, int ss, int kvHeads, int cap, int headDim)           \
        { cache_append<T>(keys, values, cp, k, v, kb, kh, vb, vh, pos, slot, ss, kvHeads, cap, headDim); }                             \
    extern "C" __global__ void attn_split_##S(float* po, float* pm, float* ps, const T* q, long long qb, long long qh, const T* keys,    \
        const T* values, const long long* cp, const long long* qpos, const long long* hi, int heads, int groups, int kvHeads, int slots,  \
        int stride, int headDim, int window, float scale, int chunk)                                                                     \
        { attn_split<T>(po, pm, ps, q, qb, qh, keys, values, cp, qpos, hi, heads, groups, kvHeads, slots, stride, headDim, window, scale, chunk); } \
    extern "C" __global__ void attn_combine_##S(T* out, const float* po, const float* pm, const float* ps, int splits, int headDim)       \
        { attn_combine<T>(out, po, pm, ps, splits, headDim); }
INSTANTIATE(float, f32)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
