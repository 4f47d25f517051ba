// LaughingHyena's distilled decode step (Tern.Distillation.ModalRecurrence.Step): one token of x_{t+1} = Λ x_t + w_t,
// y_t = Re Σ_s R_s x_{t+1,s} + D w_t for every (row, channel, k) at once. The composite path makes six passes over the modal state
// (multiply, add, select, copy, multiply, reduce); this kernel reads and writes it once. One thread per (row, channel, k, mode):
// consecutive threads touch consecutive complex entries (coalesced), and the mode sum is a shuffle within the `modes` lanes of an
// item (modes a power of two ≤ 32, so an item's lanes never straddle a warp).
//   state    [rows, channels, k, modes] complex64, updated in place where live[row] != 0 (a row that does not step keeps it)
//   w        [rows, channels, k] fp32; y the same shape
//   poles, residues [channels, modes] complex64; direct [channels] fp32; live [rows] bytes or null (every row steps)
extern "C" __global__ void modal_step(float2* state, float* y, const float* w, const unsigned char* live, const float2* poles,
    const float2* residues, const float* direct, long long items, int channels, long long k, int modes)
{
    long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long item = j / modes;
    int s = (int)(j % modes);
    bool inside = item < items;
    float part = 0.f, u = 0.f;
    int c = 0;
    if (inside)
    {
        long long row = item / ((long long)channels * k);
        c = (int)((item / k) % channels);
        u = w[item];
        float2 x = state[j], l = poles[c * modes + s], r = residues[c * modes + s];
        float2 next = make_float2(l.x * x.x - l.y * x.y + u, l.x * x.y + l.y * x.x);
        if (live == nullptr || live[row]) state[j] = next;
        part = r.x * next.x - r.y * next.y;
    }
    for (int offset = modes / 2; offset > 0; offset >>= 1) part += __shfl_xor_sync(0xffffffffu, part, offset);
    if (inside && s == 0) y[item] = part + direct[c] * u;
}
