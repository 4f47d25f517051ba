// DejaVu's selection (Liu et al. 2023, §4.2: the k neurons or heads a predictor scores highest), as the sparse kernels read
// it: the kept indices ascending. One block of 1024 threads per row of 16-bit scores (fp16 or bf16: the sign-magnitude bits
// map to order-preserving 16-bit keys), at most 32 scores a thread (32,768 units). A row is read from memory once: each
// thread keeps its keys in registers; a radix select of two 8-bit digits over per-warp histograms finds the k-th largest
// key, and the kept indices are written in order from per-warp ballots and one block-wide scan — one launch, a few
// microseconds, where topk + sort took several launches. Keys above the k-th are kept; of those equal to it, the lowest
// indices. A NaN with its sign bit clear ranks above +inf (as torch.topk ranks NaN highest), one with it set below -inf.
// Own program (not fused.cu's): a failure to compile it leaves the other kernels in service.

#define SELECT_THREADS 1024
#define SELECT_ITEMS 32
#define SELECT_WARPS (SELECT_THREADS / 32)

__device__ __forceinline__ unsigned int order_key16(unsigned short u)
{
    return (u & 0x8000u) ? (~(unsigned int)u & 0xFFFFu) : ((unsigned int)u | 0x8000u);
}

extern "C" __global__ void __launch_bounds__(SELECT_THREADS, 1)
select_top_k16(long long* __restrict__ out, const unsigned short* __restrict__ scores, int units, int k)
{
    __shared__ unsigned int histogram[SELECT_WARPS][257]; // a warp's own counts (padded: warps apart in the banks)
    __shared__ unsigned int counts[SELECT_ITEMS * SELECT_WARPS];
    __shared__ unsigned int sums[SELECT_WARPS];
    __shared__ int found[2];
    const unsigned short* row = scores + (long long)blockIdx.x * units;
    long long* kept = out + (long long)blockIdx.x * k;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    // Unit j·1024 + threadIdx.x is this thread's item j: coalesced loads, and the units' order is (item, warp, lane). (At
    // 1024 threads a block a thread has 64 registers: ptxas spills ~150 bytes a thread to L1, which costs less than
    // reading the row again for each pass; keys packed two to a register spilled more.)
    unsigned int keys[SELECT_ITEMS];
#pragma unroll
    for (int j = 0; j < SELECT_ITEMS; j++)
    {
        int i = j * SELECT_THREADS + threadIdx.x;
        keys[j] = i < units ? order_key16(row[i]) : 0u;
    }

    // The k-th largest key, a digit at a time from the top; `need`: how many of the keys that match it so far are kept.
    unsigned int want = 0;
    int need = k;
    for (int shift = 8; shift >= 0; shift -= 8)
    {
        for (int i = threadIdx.x; i < SELECT_WARPS * 257; i += SELECT_THREADS) (&histogram[0][0])[i] = 0;
        __syncthreads();
#pragma unroll
        for (int j = 0; j < SELECT_ITEMS; j++)
        {
            int i = j * SELECT_THREADS + threadIdx.x;
            if (i < units && (shift == 8 || (keys[j] >> 8) == (want >> 8))) atomicAdd(&histogram[warp][(keys[j] >> shift) & 255u], 1u);
        }
        __syncthreads();
        // Threads 0–255 (warps 0–7), one digit each: its count, then the counts of this digit and every larger one.
        unsigned int count = 0, suffix = 0;
        if (threadIdx.x < 256)
        {
            for (int w = 0; w < SELECT_WARPS; w++) count += histogram[w][threadIdx.x];
            suffix = count;
            for (int o = 1; o < 32; o <<= 1)
            {
                unsigned int n = __shfl_down_sync(0xffffffffu, suffix, o);
                if (lane + o < 32) suffix += n;
            }
            if (lane == 0) sums[warp] = suffix; // the warp's 32 digits
        }
        __syncthreads();
        if (threadIdx.x < 256)
        {
            unsigned int atLeast = suffix;
            for (int w = warp + 1; w < 8; w++) atLeast += sums[w];
            unsigned int above = atLeast - count;
            if (above < (unsigned int)need && atLeast >= (unsigned int)need)
            {
                found[0] = threadIdx.x;
                found[1] = need - (int)above;
            }
        }
        __syncthreads();
        want |= (unsigned int)found[0] << shift;
        need = found[1];
        __syncthreads(); // sums and found are written again by the next digit
    }

    // Kept: every key above `want`, and the first `need` equal to it. Per (item, warp): greater | equal << 16 (each at most
    // 32 768 in a row, so the two halves never carry into each other in the scan).
    const unsigned int below = (1u << lane) - 1u;
#pragma unroll
    for (int j = 0; j < SELECT_ITEMS; j++)
    {
        bool valid = j * SELECT_THREADS + (int)threadIdx.x < units;
        unsigned int greater = __ballot_sync(0xffffffffu, valid && keys[j] > want);
        unsigned int equal = __ballot_sync(0xffffffffu, valid && keys[j] == want);
        if (lane == 0) counts[j * SELECT_WARPS + warp] = __popc(greater) | ((unsigned int)__popc(equal) << 16);
    }
    __syncthreads();
    // Exclusive scan of the 1024 (item, warp) counts in the units' order, one per thread.
    unsigned int own = counts[threadIdx.x], inclusive = own;
    for (int o = 1; o < 32; o <<= 1)
    {
        unsigned int n = __shfl_up_sync(0xffffffffu, inclusive, o);
        if (lane >= o) inclusive += n;
    }
    if (lane == 31) sums[warp] = inclusive;
    __syncthreads();
    if (warp == 0)
    {
        unsigned int total = sums[lane], scanned = total;
        for (int o = 1; o < 32; o <<= 1)
        {
            unsigned int n = __shfl_up_sync(0xffffffffu, scanned, o);
            if (lane >= o) scanned += n;
        }
        sums[lane] = scanned - total;
    }
    __syncthreads();
    counts[threadIdx.x] = sums[warp] + inclusive - own;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < SELECT_ITEMS; j++)
    {
        int i = j * SELECT_THREADS + threadIdx.x;
        bool valid = i < units, isGreater = valid && keys[j] > want, isEqual = valid && keys[j] == want;
        unsigned int greater = __ballot_sync(0xffffffffu, isGreater), equal = __ballot_sync(0xffffffffu, isEqual);
        unsigned int before = counts[j * SELECT_WARPS + warp];
        int greaterBefore = (int)(before & 0xFFFFu) + __popc(greater & below);
        int equalBefore = (int)(before >> 16) + __popc(equal & below);
        if (isGreater || (isEqual && equalBefore < need)) kept[greaterBefore + min(equalBefore, need)] = i;
    }
}
