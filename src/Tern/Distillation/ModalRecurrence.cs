using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Distillation;

/// <summary>
/// The distilled long convolution as a diagonal recurrence, per channel c and mode n (SH convention, brief §1.5):
/// s_t = λ s_{t−1} + w_t,  y_t = Re Σ_n R_n s_t[n] + D w_t,  s_{−1} = 0,
/// which equals y = ĥ * w with ĥ_t = Re Σ R λ^t + D·[t = 0] (the paper's x_{t+1} = Λx_t + Bu_t, y_t = Re(Cx_t) + Du_t with the
/// state taken after absorbing u_t: B = 1, C = R). State s is complex [B, C, S]; batched over rows and channels. Inputs may carry
/// extra dimensions after the channel, [B, C, K…], that share channel c's filter (MultiHyena's N×N entries of head c): the state is
/// then [B, C, K…, S].
/// </summary>
public sealed class ModalRecurrence : IDisposable
{
    readonly object kernelLock = new();
    Tensor? kernel; // ĥ [C, ≥ every length asked] in the output type, on the state's device

    ModalRecurrence(ModalFilters filters, Tensor poles, Tensor residues, Tensor direct)
    {
        (Filters, Poles, Residues, Direct) = (filters, poles, residues, direct);
    }

    /// <summary>The bank this recurrence runs.</summary>
    public ModalFilters Filters { get; }
    /// <summary>λ [C, S], in the state's complex type.</summary>
    public Tensor Poles { get; }
    /// <summary>R [C, S], in the state's complex type.</summary>
    public Tensor Residues { get; }
    /// <summary>D [C], in the state's real type.</summary>
    public Tensor Direct { get; }
    /// <summary>The state's type: complex64 (default: fp32 state as stripedhyena keeps it) or complex128.</summary>
    public ScalarType StateType => Poles.dtype;
    /// <summary>The outputs' real type (fp32 for complex64 state, fp64 for complex128).</summary>
    public ScalarType OutputType => StateType == ScalarType.ComplexFloat64 ? ScalarType.Float64 : ScalarType.Float32;

    /// <summary>Puts <paramref name="filters"/> on <paramref name="device"/> with state type <paramref name="stateType"/>.</summary>
    public static ModalRecurrence Create(ModalFilters filters, Device? device = null, ScalarType stateType = ScalarType.ComplexFloat32)
    {
        if (stateType is not (ScalarType.ComplexFloat32 or ScalarType.ComplexFloat64))
            throw new ArgumentException($"the modal state must be complex64 or complex128, not {stateType}.", nameof(stateType));
        device ??= CPU;
        var real = stateType == ScalarType.ComplexFloat64 ? ScalarType.Float64 : ScalarType.Float32;
        using var scope = torch.NewDisposeScope();
        var poles = filters.ComplexTensor(filters.Poles).to(stateType, device);
        var residues = filters.ComplexTensor(filters.Residues).to(stateType, device);
        var direct = torch.tensor(filters.Direct.ToArray(), ScalarType.Float64).to(real, device);
        return new ModalRecurrence(filters, poles.DetachFromDisposeScope(), residues.DetachFromDisposeScope(), direct.DetachFromDisposeScope());
    }

    /// <summary>A zero state [<paramref name="batch"/>, C, <paramref name="tied"/>…, S] (nothing seen yet), in the caller's dispose
    /// scope.</summary>
    public Tensor NewState(long batch, params long[] tied) =>
        torch.zeros(new[] { batch, Poles.size(0) }.Concat(tied).Append(Poles.size(1)).ToArray(), StateType, Poles.device);

    /// <summary>The modal kernel ĥ [C, <paramref name="length"/>] in the output type (powers computed in fp64 on the state's device once,
    /// kept for every shorter length): a view, in the caller's dispose scope.</summary>
    public Tensor Kernel(int length)
    {
        lock (kernelLock)
        {
            if (kernel is null || kernel.size(1) < length)
            {
                // Computed on the state's device and kept for the longest length asked (rounded up to a power of two): it was
                // recomputed on the CPU for every layer and prefill chunk (a 16k-token prefill at the 1.3B shape took 9.7 s then;
                // how much of it this was is not measured).
                using var scope = torch.NewDisposeScope();
                var longer = Filters.Kernel((int)Math.Min(int.MaxValue, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)length)), Poles.device).to(OutputType);
                kernel?.Dispose();
                kernel = longer.DetachFromDisposeScope();
            }
            return kernel.narrow(1, 0, length);
        }
    }

    /// <summary>
    /// The prompt's outputs y = ĥ * w for <paramref name="input"/> w [B, C, K…, T], by FFT (<see cref="LongConvolution"/>).
    /// </summary>
    public Tensor Convolve(Tensor input)
    {
        using var scope = torch.NewDisposeScope();
        var kernel = Tied(Kernel((int)input.size(-1)), input.dim() - 1);
        return LongConvolution.Causal(input.to(OutputType), kernel).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The state after a prompt w [B, C, K…, T], in closed form: s[b, c, n] = Σ_{k&lt;T} λ_{c,n}^{T−1−k} w[b, c, k] (one batched
    /// product with the powers λ^j, j = T−1 … 0, computed in fp64), i.e. the state after the last prompt token, ready for <see cref="Step"/>
    /// on token T. Leading zeros in w change nothing, so left-padded rows of different lengths share one call; right padding
    /// would not (the state would decay through the pad). Costs O(B·C·S·T) time and O(C·S·T) memory for the powers.
    /// </summary>
    public Tensor Prefill(Tensor input)
    {
        if (input.dim() < 3 || input.size(1) != Poles.size(0))
            throw new ArgumentException($"the prompt must be [B, {Poles.size(0)}, …, T], got [{string.Join(", ", input.shape)}].", nameof(input));
        using var scope = torch.NewDisposeScope();
        long length = input.size(-1);
        var exponents = torch.arange(length - 1, -1, -1, ScalarType.Float64, Poles.device);   // T−1−k for k = 0..T−1
        var (re, im) = ModalFilters.PowersOf(Poles, exponents);                              // [C, S, T]
        // Powers in fp64, the product in the outputs' type, both parts in one pass over w: widening w to fp64 copied, by its
        // shapes, 8.6 GB a layer for a 1.3B-shape prefill chunk of 64 rows × 1024 tokens. Contiguous (a copy of C·T·2S): transposed,
        // the CPU's batched product gave a row results that depended on the rows beside it (in the last bits: 9.5e−7 on products
        // of order 1), so a step run over blocks of rows (HyenaOperator.StepBlockElements) did not equal it run whole.
        var powers = torch.cat(new[] { re, im }, 1).transpose(1, 2).to(OutputType).contiguous(); // [C, T, 2S]
        var w = input.to(OutputType).reshape(input.size(0), input.size(1), -1, length);     // [B, C, K, T]
        var parts = w.matmul(powers);                                                         // [B, C, K, 2S]
        long modes = Poles.size(1);
        var shape = input.shape[..^1].Append(modes).ToArray();
        return torch.complex(parts.narrow(-1, 0, modes), parts.narrow(-1, modes, modes)).to(StateType).view(shape).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One token: <paramref name="state"/> [B, C, K…, S] ← λ ⊙ state + w (in place), and returns y [B, C, K…] =
    /// Re Σ_n R ⊙ state + D ⊙ w for <paramref name="input"/> w [B, C, K…], in the output type, in the caller's dispose scope.
    /// Rows where <paramref name="real"/> [B] is false (padding: a row that does not step) keep their state. On CUDA with a
    /// complex64 state, one fused kernel reads and writes the state once (<c>Interop/Kernels/modal.cu</c>).
    /// </summary>
    public Tensor Step(Tensor state, Tensor input, Tensor? real = null)
    {
        using var scope = torch.NewDisposeScope();
        var w = input.to(OutputType);
        if (Interop.FusedKernels.TryModalStep(state, w.contiguous(), real?.contiguous(), Poles, Residues, Direct, out var fused))
            return fused.MoveToOuterDisposeScope();
        var next = state * Tied(Poles, state.dim() - 1) + w.unsqueeze(-1).to(StateType);
        if (real is null) state.copy_(next);
        else state.copy_(torch.where(real.view(new[] { real.size(0) }.Concat(Enumerable.Repeat(1L, (int)state.dim() - 1)).ToArray()), next, state));
        var y = (next * Tied(Residues, state.dim() - 1)).real.sum(-1) + Direct.view(new[] { Direct.size(0) }.Concat(Enumerable.Repeat(1L, (int)w.dim() - 2)).ToArray()) * w;
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Several tokens continuing from <paramref name="state"/> [B, C, K…, S] (updated in place): <paramref name="input"/> w
    /// [B, C, K…, T] whose row b starts with <paramref name="leading"/>[b] padding steps (zero in w) before its real tokens.
    /// Real token j of row b (j ≥ p_b) gets y_j = (ĥ * w)_j + Re Σ_n R_n λ_n^{j−p_b+1} s_n — the FFT convolution of the step plus
    /// the decayed state it continues from — and the state becomes λ^{T−p_b} s + Σ_k λ^{T−1−k} w_k (<see cref="Prefill"/> for a
    /// zero state). Equals <see cref="Step"/> token by token; outputs at padding are meaningless. Powers in fp64.
    /// </summary>
    public Tensor Run(Tensor state, Tensor input, Tensor leading)
    {
        using var scope = torch.NewDisposeScope();
        long b = input.size(0), t = input.size(-1);
        var y = Convolve(input);                                                                     // [B, C, K…, T]
        var p = leading.to(ScalarType.Float64).view(b, 1, 1, 1);
        var (re, im) = ModalFilters.PowersOf(Poles, (torch.arange(t, ScalarType.Float64, Poles.device).view(1, 1, 1, t) - p + 1).clamp_min(0)); // [B, C, S, T]
        // Powers in fp64, the product in the state's precision: the carry is as large as the step's outputs.
        var carried = (Tied(Residues, state.dim() - 1) * state).reshape(b, state.size(1), -1, state.size(-1)); // [B, C, K, S]
        var carry = carried.real.matmul(re.to(OutputType)) - carried.imag.matmul(im.to(OutputType));   // Re Σ_n R s λ^e, [B, C, K, T]
        y = y + carry.view_as(y).to(y.dtype);
        var (decayRe, decayIm) = ModalFilters.PowersOf(Poles, p.neg() + t);                             // λ^{T−p}, [B, C, S, 1]
        var decay = torch.complex(decayRe, decayIm).view(new[] { b, state.size(1) }.Concat(Enumerable.Repeat(1L, (int)state.dim() - 3)).Append(state.size(-1)).ToArray());
        state.copy_((decay * state.to(ScalarType.ComplexFloat64)).to(StateType) + Prefill(input));
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>[C, X] viewed as [C, 1…, X] with <paramref name="dims"/> dimensions in all, to broadcast against [B, C, K…, X].</summary>
    static Tensor Tied(Tensor perChannel, long dims)
    {
        var shape = new long[dims];
        Array.Fill(shape, 1L);
        (shape[0], shape[^1]) = (perChannel.size(0), perChannel.size(1));
        return perChannel.view(shape);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        kernel?.Dispose();
        Poles.Dispose();
        Residues.Dispose();
        Direct.Dispose();
    }
}
