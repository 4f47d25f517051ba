using Tern.Caching;
using Tern.Distillation;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Models.Hyena;

/// <summary>A Hyena operator's shape and implicit-filter settings (brief §1.2; defaults: safari's Pile 153M config).</summary>
public sealed record HyenaOptions
{
    /// <summary>D, the model width.</summary>
    public required int Width { get; init; }
    /// <summary>L_max, the filters' length (the training context).</summary>
    public required int MaxLength { get; init; }
    /// <summary>N: N − 1 long convolutions, N + 1 projected streams. 2 (one long convolution) is the default.</summary>
    public int Order { get; init; } = 2;
    /// <summary>F, the filter FFN's width (safari's <c>filter_order</c>).</summary>
    public int FilterWidth { get; init; } = 64;
    /// <summary>E, the positional features (odd, ≥ 3): t_norm plus (E − 1)/2 cosine and sine bands.</summary>
    public int EmbedDim { get; init; } = 33;
    /// <summary>w, the initial frequency of the sine activations.</summary>
    public double SineFrequency { get; init; } = 14;
    /// <summary>Inner F→F layers of the filter FFN.</summary>
    public int InnerLayers { get; init; } = 2;
    /// <summary>The decay window's target (each channel decays to about this), fastest and slowest fractions of the window.</summary>
    public double DecayTarget { get; init; } = 1e-2;
    /// <inheritdoc cref="DecayTarget"/>
    public double FastDecay { get; init; } = 0.3;
    /// <inheritdoc cref="DecayTarget"/>
    public double SlowDecay { get; init; } = 1.5;
    /// <summary>Added to the window: h·(exp(−|δ| t_norm) + shift).</summary>
    public double DecayShift { get; init; }
    /// <summary>M &gt; 0: MultiHyena (brief §1.3, order 2 only) with M heads of width D/M, one long filter per head tied across its
    /// channels (k vᵀ per step, convolved, contracted with q over the k index); 0: Hyena, one filter per channel.</summary>
    public int Heads { get; init; }

    /// <summary>Long filters per convolution: M for MultiHyena, D for Hyena.</summary>
    public int FilterChannels => Heads > 0 ? Heads : Width;
}

/// <summary>
/// The Hyena operator as safari's <c>hyena.py</c> computes it (brief §1.2), over whole sequences (training and prefill):
/// z = u·W_inᵀ + b_in; z̃ = causal depthwise conv of width 3 (the last tap on the current sample, pitfall 5);
/// [x_0, …, x_{N−1}, v] = split(z̃); for i = N−1 … 1: v ← v ⊙ x_i (gate first, pitfall 4), v ← h^(i) * v + β^(i) ⊙ v;
/// y = (v ⊙ x_0)·W_outᵀ + b_out. The long filters h = Modulate(FFN(PosEmb(t))) are the implicit filter (sine-activated MLP,
/// exponential decay window). With <see cref="HyenaOptions.Heads"/> it is MultiHyena (order 2, brief §1.3): the long filter of head m
/// convolves k vᵀ, and y = Wᵀq per head. Learned weights are named as safari's state dict (<see cref="WeightShapes"/>); the
/// positional features, sine frequency and decay rates are fixed by the options (safari trains the first two; here they stay at
/// their initial values). An operator made by <see cref="Create"/> owns its weights; a language model's layers borrow theirs.
/// For order 2, <see cref="Prefill"/> and <see cref="Step"/> run the distilled layer recurrently, and a language model steps
/// sequences through a cache (<see cref="Stepped(Tensor, Tensor, Tensor, ModalRecurrence, Tensor)"/> with the modal state,
/// <see cref="Cached"/> with the past inputs).
/// </summary>
public sealed class HyenaOperator : IDisposable
{
    readonly Func<string, Tensor> weight;
    readonly HyenaFilterBasis basis;
    readonly Dictionary<string, Tensor>? owned;

    HyenaOperator(HyenaOptions options, Func<string, Tensor> weight, HyenaFilterBasis basis, Dictionary<string, Tensor>? owned) =>
        (Options, this.weight, this.basis, this.owned) = (options, weight, basis, owned);

    /// <summary>The shape and filter settings.</summary>
    public HyenaOptions Options { get; }

    /// <summary>The learned weights by safari's names (in_proj, short_filter, filter_fn.*, out_proj).</summary>
    public IReadOnlyDictionary<string, Tensor> Weights => WeightShapes(Options).ToDictionary(w => w.Name, w => weight(w.Name));

    /// <summary>The learned weights of an operator of <paramref name="options"/>: safari's names and shapes.</summary>
    public static IEnumerable<(string Name, long[] Shape)> WeightShapes(HyenaOptions options)
    {
        Validate(options);
        int d = options.Width, n = options.Order, f = options.FilterWidth, e = options.EmbedDim;
        int filters = options.FilterChannels * (n - 1);
        yield return ("in_proj.weight", new long[] { (n + 1) * d, d });
        yield return ("in_proj.bias", new long[] { (n + 1) * d });
        yield return ("short_filter.weight", new long[] { (n + 1) * d, 1, 3 });
        yield return ("short_filter.bias", new long[] { (n + 1) * d });
        yield return ("out_proj.weight", new long[] { d, d });
        yield return ("out_proj.bias", new long[] { d });
        yield return ("filter_fn.bias", new long[] { filters });
        yield return ("filter_fn.implicit_filter.0.weight", new long[] { f, e });
        yield return ("filter_fn.implicit_filter.0.bias", new long[] { f });
        int layer = 0;
        for (int i = 0; i < options.InnerLayers; i++)
        {
            layer += 2; // safari's Sequential: Linear, Sin, Linear, Sin, …
            yield return ($"filter_fn.implicit_filter.{layer}.weight", new long[] { f, f });
            yield return ($"filter_fn.implicit_filter.{layer}.bias", new long[] { f });
        }
        yield return ($"filter_fn.implicit_filter.{layer + 2}.weight", new long[] { filters, f });
    }

    /// <summary>
    /// Fresh learned weights in fp32 on the CPU, drawn from <paramref name="generator"/>: linear maps and the short conv as
    /// PyTorch's defaults (U(±1/√fan_in) weights and biases), β ~ N(0, 1), as safari initialises them. The caller owns them.
    /// </summary>
    public static Dictionary<string, Tensor> InitialWeights(HyenaOptions options, torch.Generator generator)
    {
        using var scope = torch.NewDisposeScope();
        var shapes = WeightShapes(options).ToDictionary(w => w.Name, w => w.Shape);
        var w = new Dictionary<string, Tensor>();
        foreach (var (name, shape) in shapes)
        {
            if (name == "filter_fn.bias")
            {
                w[name] = torch.randn(shape, generator: generator).DetachFromDisposeScope();
                continue;
            }
            // A bias takes its weight's fan-in; the depthwise short conv's is its 3 taps.
            string matrix = name.EndsWith(".bias", StringComparison.Ordinal) ? name[..^".bias".Length] + ".weight" : name;
            long fanIn = shapes[matrix][^1];
            w[name] = torch.rand(shape, generator: generator).mul_(2).sub_(1).mul_(1 / Math.Sqrt(fanIn)).DetachFromDisposeScope();
        }
        return w;
    }

    /// <summary>A freshly initialised operator (<see cref="InitialWeights"/>) in fp32 on the CPU, owning its weights.</summary>
    public static HyenaOperator Create(HyenaOptions options, torch.Generator generator)
    {
        var w = InitialWeights(options, generator);
        return new HyenaOperator(options, name => w[name], HyenaFilterBasis.Create(options, ScalarType.Float32, CPU), w);
    }

    /// <summary>An operator over borrowed weights (a language model's layer: <paramref name="weight"/> looks them up by name) and a
    /// shared <paramref name="basis"/>; disposing it frees nothing.</summary>
    internal static HyenaOperator Over(HyenaOptions options, Func<string, Tensor> weight, HyenaFilterBasis basis) => new(options, weight, basis, null);

    static void Validate(HyenaOptions options)
    {
        if (options.Order < 2) throw new ArgumentOutOfRangeException(nameof(options), options.Order, "Order must be at least 2.");
        if (options.EmbedDim < 3 || options.EmbedDim % 2 == 0) throw new ArgumentOutOfRangeException(nameof(options), options.EmbedDim, "EmbedDim must be odd and at least 3.");
        if (options.Heads > 0 && (options.Order != 2 || options.Width % options.Heads != 0))
            throw new ArgumentOutOfRangeException(nameof(options), options.Heads, $"MultiHyena needs order 2 and heads dividing the width {options.Width}.");
    }

    /// <summary>
    /// The long filters actually convolved (post-modulation, what distillation fits; pitfall 2): [N−1, D or M, L] for
    /// L = <paramref name="length"/> ≤ L_max (the first L taps of the L_max window, as safari's position embedding slices). Filter
    /// o is applied with gate x_{N−1−o}. In the caller's dispose scope.
    /// </summary>
    public Tensor Filters(int length)
    {
        if (length < 1 || length > Options.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(length), length, $"the filters have {Options.MaxLength} taps.");
        using var scope = torch.NewDisposeScope();
        double freq = Options.SineFrequency;
        Tensor Sin(Tensor x) => (x * freq).sin();   // one shared Sin module (and frequency) in safari's FFN
        Tensor Lin(Tensor x, string name, bool bias = true) => Linear.Apply(x, W(name + ".weight"), bias ? W(name + ".bias") : null);
        var h = Sin(Lin(basis.Features, "filter_fn.implicit_filter.0"));
        int layer = 0;
        for (int i = 0; i < Options.InnerLayers; i++)
        {
            layer += 2;
            h = Sin(Lin(h, $"filter_fn.implicit_filter.{layer}"));
        }
        h = Lin(h, $"filter_fn.implicit_filter.{layer + 2}", bias: false);                                // [1, L_max, D(N−1)]
        h = (h * basis.Window).narrow(1, 0, length);
        return h.view(length, Options.Order - 1, Options.FilterChannels).permute(1, 2, 0).contiguous().MoveToOuterDisposeScope(); // 'l (o d) -> o d l'
    }

    /// <summary>The operator on <paramref name="input"/> u [B, L, D] with its own implicit filters.</summary>
    public Tensor Forward(Tensor input)
    {
        using var scope = torch.NewDisposeScope();
        return Forward(input, Filters((int)input.size(1))).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The operator on <paramref name="input"/> u [B, L, D] with the given long filters [N−1, D or M, ≥ L] (its own, or distilled
    /// kernels ĥ: the distilled layer in convolution mode), the long convolutions by FFT zero-padded to ≥ 2L.
    /// </summary>
    public Tensor Forward(Tensor input, Tensor filters)
    {
        using var scope = torch.NewDisposeScope();
        var streams = Project(input);
        int n = Options.Order;
        if (n == 2) return OutProject(Convolved(streams, filters[0])).MoveToOuterDisposeScope();
        var beta = W("filter_fn.bias").view(n - 1, Options.Width, 1);
        var v = streams[n];
        for (int o = 0; o < n - 1; o++)
        {
            v = v * streams[n - 1 - o];                                                            // gate first …
            v = LongConvolution.Causal(v, filters[o]) + beta[o] * v;                               // … then conv + skip
        }
        return OutProject(v * streams[0]).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Order 2, distilled: the prompt u [B, T, D] in convolution mode with the bank's kernels ĥ, and the state after its last token
    /// (the short conv's last two projected rows and the modal state). Rows of different lengths must be left-padded.
    /// </summary>
    public (Tensor Output, HyenaState State) Prefill(Tensor input, ModalRecurrence recurrence)
    {
        RequireOrder2(recurrence);
        long b = input.size(0), t = input.size(1);
        var state = new HyenaState(torch.zeros(b, 3L * Options.Width, 2, dtype: input.dtype, device: input.device).DetachFromDisposeScope(),
            NewModalState(b, recurrence).DetachFromDisposeScope());
        using var scope = torch.NewDisposeScope();
        var positions = torch.arange(t, ScalarType.Int64, input.device).expand(b, t);
        return (Stepped(input, state.Fir, state.Modal, recurrence, positions).MoveToOuterDisposeScope(), state);
    }

    /// <summary>
    /// Order 2, distilled: one token u [B, D] → output [B, D], updating <paramref name="state"/> in place:
    /// z̃ = W₀z_{t−2} + W₁z_{t−1} + W₂z_t + b; w = x1 ⊙ v; s ← λs + w; y = x0 ⊙ (Re Σ R s + D w + β w); out = y·W_outᵀ + b_out.
    /// </summary>
    public Tensor Step(Tensor input, HyenaState state, ModalRecurrence recurrence)
    {
        RequireOrder2(recurrence);
        using var scope = torch.NewDisposeScope();
        var positions = torch.zeros(input.size(0), 1, ScalarType.Int64, input.device);
        return Stepped(input.unsqueeze(1), state.Fir, state.Modal, recurrence, positions).squeeze(1).MoveToOuterDisposeScope();
    }

    /// <summary>A zero modal state for <paramref name="batch"/> sequences: [B, D, S] (Hyena) or [B, M, N, N, S] (MultiHyena).</summary>
    internal Tensor NewModalState(long batch, ModalRecurrence recurrence) =>
        Options.Heads == 0 ? recurrence.NewState(batch) : recurrence.NewState(batch, Options.Width / Options.Heads, Options.Width / Options.Heads);

    /// <summary>
    /// Order 2, distilled, one step of a language model's sequences: u [B, T, D] at <paramref name="positions"/> [B, T] (−1: left
    /// padding, or a row that does not step) → outputs [B, T, D], continuing from and updating in place the short conv's tail
    /// <paramref name="fir"/> [B, 3D, 2] and the modal state <paramref name="modal"/>. One token: x_{t+1} = Λx_t + w_t,
    /// y_t = Re(R x_t) + D w_t (<see cref="ModalRecurrence.Step"/>); several: the FFT convolution with ĥ plus the decayed state
    /// (<see cref="ModalRecurrence.Run"/>). Padding never changes a row's state, so rows of any lengths step exactly.
    /// </summary>
    /// <remarks>Several tokens run over blocks of rows (<see cref="StepBlockRows"/>) when w of all rows would exceed
    /// <see cref="StepBlockElements"/>: every step of a row depends on that row alone, and <paramref name="fir"/> and
    /// <paramref name="modal"/> are updated through their rows' views.</remarks>
    internal Tensor Stepped(Tensor input, Tensor fir, Tensor modal, ModalRecurrence recurrence, Tensor positions)
    {
        long b = input.size(0), rows = StepBlockRows(b, input.size(1));
        if (rows == b) return SteppedRows(input, fir, modal, recurrence, positions);
        using var scope = torch.NewDisposeScope();
        Tensor? output = null;
        for (long r = 0; r < b; r += rows)
        {
            long n = Math.Min(rows, b - r);
            using var block = torch.NewDisposeScope();                                                  // one block's temporaries at a time
            var y = SteppedRows(input.narrow(0, r, n), fir.narrow(0, r, n), modal.narrow(0, r, n), recurrence, positions.narrow(0, r, n));
            output ??= torch.empty(new[] { b }.Concat(y.shape[1..]).ToArray(), y.dtype, y.device).MoveToOuterDisposeScope();
            output.narrow(0, r, n).copy_(y);
        }
        return output!.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Elements of w (the step's pre-gated streams, <see cref="PreGate"/>) that one block of rows of a several-token step may hold:
    /// 2^28 (1 GiB in fp32). The step's large temporaries — the projected streams, w, its FFT padded to 2T complex and the powers
    /// of the carry — grow with rows × tokens (w alone holds D·N per token for MultiHyena): at the 1.3B shape (D = 2048, 256 heads
    /// of N = 8) a 16k-token prefill in 1,024-token chunks ran out of an H200's memory at 256 rows (an allocation of 32 GiB) and
    /// peaked at 137 GB of 140 at 128 rows, while 256-token chunks were too slow (over 300 s). The work is linear in rows, so
    /// the memory need not be; the budget keeps each block large (16 rows of 1,024 tokens at that shape). Settable for tests (tiny
    /// blocks).
    /// </summary>
    internal static long StepBlockElements { get; set; } = 1L << 28;

    /// <summary>Rows per block of a step of <paramref name="tokens"/> tokens over <paramref name="batch"/> rows: all of them for one
    /// token (the decode step, fused and graphed, stays whole) or while w fits <see cref="StepBlockElements"/>; else as many as fit,
    /// at least one (a row that alone exceeds the budget runs whole).</summary>
    internal long StepBlockRows(long batch, long tokens)
    {
        if (tokens <= 1 || batch <= 1) return batch;
        long perRow = tokens * (Options.Heads > 0 ? (long)Options.Width * (Options.Width / Options.Heads) : Options.Width);
        return Math.Clamp(StepBlockElements / perRow, 1, batch);
    }

    /// <summary><see cref="Stepped(Tensor, Tensor, Tensor, ModalRecurrence, Tensor)"/> over all of its rows at once.</summary>
    Tensor SteppedRows(Tensor input, Tensor fir, Tensor modal, ModalRecurrence recurrence, Tensor positions)
    {
        using var scope = torch.NewDisposeScope();
        var real = positions.ge(0);
        var streams = Project(input, fir, real);
        var w = (PreGate(streams[1], streams[2]) * RealAlongTime(real, Options.Heads > 0 ? 5 : 3)).to(recurrence.OutputType);
        var conv = input.size(1) == 1
            ? recurrence.Step(modal, w.select(-1, 0), real.select(1, 0)).unsqueeze(-1)
            : recurrence.Run(modal, w, real.logical_not().sum(1));
        return OutProject(PostGate(streams[0], (conv + Beta(w) * w).to(input.dtype))).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Order 2, undistilled, one step of a language model's sequences through <paramref name="cache"/>, which holds every past
    /// token's gated streams as an append-only KV layer (MultiHyena's heads as KV heads: keys k, values v, [B, M, T, N]): the
    /// long convolution y_t = Σ_{s≤t} h_{t−s} Z_s + β Z_t with Z_s = k_s v_sᵀ, contracted with q_t, is
    /// y_t[j] = Σ_s (h_{t−s} + β·[s = t]) (q_t·k_s) v_s[j] — linear attention weighted by the filter at the position lag, exact
    /// for any left padding and row order. A first step over an empty cache convolves by FFT instead (the prompt); later steps
    /// cost O(tokens held) each, as cached-convolution Hyena does. <paramref name="fir"/> as in
    /// <see cref="Stepped(Tensor, Tensor, Tensor, ModalRecurrence, Tensor)"/>; <paramref name="filters"/> [M, ≥ max position + 1].
    /// </summary>
    internal Tensor Cached(Tensor input, Tensor fir, LayerKvCache cache, ForwardBatch batch, Tensor filters)
    {
        if (Options.Order != 2 || Options.Heads == 0) throw new NotSupportedException("a cached Hyena step is implemented for MultiHyena (order 2, heads > 0).");
        using var scope = torch.NewDisposeScope();
        var real = batch.Positions.ge(0);
        var streams = Project(input, fir, real);
        var mask = RealAlongTime(real, 3);
        var (q, k, v) = (streams[0], streams[1] * mask, streams[2] * mask);
        long b = input.size(0), t = input.size(1);
        int m = Options.Heads, n = Options.Width / m;
        Tensor Heads(Tensor x) => x.view(b, m, n, t).transpose(2, 3);                                 // [B, D, T] → [B, M, T, N]
        bool fresh = cache.Length == 0 && batch.WriteSlots is null;
        cache.Update(Heads(k).to(cache.DType), Heads(v).to(cache.DType), batch.Positions, batch.HasPadding, batch.WriteSlots);
        cache.EndStep();
        if (fresh) return OutProject(Convolved(new[] { q, k, v }, filters)).MoveToOuterDisposeScope();
        bool all = batch.WriteSlots is not null;
        var (keys, values, held) = all ? (cache.Keys, cache.Values, cache.Positions) : (cache.ActiveKeys, cache.ActiveValues, cache.ActivePositions);
        var lag = batch.Positions.view(b, 1, t, 1) - held.unsqueeze(2);                               // [B, M, T, slots]
        var visible = held.unsqueeze(2).ge(0) & lag.ge(0);
        var taps = filters.to(ScalarType.Float32).clone();
        taps.select(1, 0).add_(Beta(taps));                                                          // h_0 + β: the skip is lag 0
        long span = taps.size(1);
        var weights = taps.view(1, m, 1, span).expand(b, m, t, span).gather(3, lag.clamp(0, span - 1).expand(b, m, t, lag.size(3)));
        var scores = Heads(q).to(keys.dtype).matmul(keys.transpose(2, 3)).to(ScalarType.Float32) * weights * visible;
        var y = scores.to(values.dtype).matmul(values);                                              // [B, M, T, N]
        return OutProject(y.transpose(2, 3).reshape(b, Options.Width, t).to(input.dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>Order 2 in convolution mode: q ⊙ (h * (k ⊙ v) + β k ⊙ v) (MultiHyena: per head, contracted with q), with the
    /// long filter <paramref name="filter"/> [D or M, ≥ L] by FFT; streams [q, k, v] each [B, D, L].</summary>
    Tensor Convolved(Tensor[] streams, Tensor filter)
    {
        var pre = PreGate(streams[1], streams[2]);
        var kernel = filter.narrow(-1, 0, pre.size(-1));
        var conv = LongConvolution.Causal(pre, kernel.view(new[] { kernel.size(0) }.Concat(Enumerable.Repeat(1L, (int)pre.dim() - 3)).Append(kernel.size(1)).ToArray()));
        return PostGate(streams[0], conv + Beta(pre) * pre);
    }

    /// <summary>The N + 1 streams [x_0, …, x_{N−1}, v], each [B, D, L] (after the short conv) of a whole sequence u [B, L, D].</summary>
    Tensor[] Project(Tensor input)
    {
        long b = input.size(0), length = input.size(1);
        var z = Linear.Apply(input, W("in_proj.weight"), W("in_proj.bias")).transpose(1, 2);         // [B, (N+1)D, L]
        var filtered = F.conv1d(z, W("short_filter.weight").to(z.dtype), W("short_filter.bias").to(z.dtype), padding: 2, groups: z.size(1)).narrow(2, 0, length);
        return filtered.chunk(Options.Order + 1, 1);
    }

    /// <summary>
    /// The streams of a step u [B, T, D] that continues sequences whose last two projected rows are <paramref name="fir"/>
    /// [B, (N+1)D, 2] (zero for a sequence that starts here), where <paramref name="real"/> [B, T] marks real tokens (a row's
    /// padding leads it). Each row's projected inputs are zeroed at its padding and preceded by its tail where its real tokens
    /// start — a per-row gather, so the short conv sees z_{t−2}, z_{t−1} exactly — and <paramref name="fir"/> becomes each row's
    /// last two rows (unchanged for a row that does not step).
    /// </summary>
    Tensor[] Project(Tensor input, Tensor fir, Tensor real)
    {
        long b = input.size(0), t = input.size(1);
        var z = (Linear.Apply(input, W("in_proj.weight"), W("in_proj.bias")) * real.unsqueeze(2)).transpose(1, 2); // [B, (N+1)D, T]
        var extended = torch.cat(new[] { fir.to(z.dtype), z }, 2);                                      // tail, then the step
        // Column c of the row as the conv reads it: zero before its padding ends, the tail at [p, p + 2), its tokens after.
        var leading = real.logical_not().sum(1, keepdim: true);                                         // p, [B, 1]
        var c = torch.arange(t + 2, ScalarType.Int64, input.device).unsqueeze(0);
        // c < p → 2 (a padding column, zero), p ≤ c < p + 2 → c − p, else c; in arithmetic, with no host value (a CUDA graph captures it).
        var before = c.lt(leading).to(ScalarType.Int64);
        var tail = c.lt(leading + 2).to(ScalarType.Int64) - before;
        var source = c + before * (c.neg() + 2) - tail * leading;
        var aligned = extended.gather(2, source.unsqueeze(1).expand(b, extended.size(1), t + 2));
        using (torch.no_grad()) fir.copy_(aligned.narrow(2, t, 2));
        var filtered = F.conv1d(aligned, W("short_filter.weight").to(z.dtype), W("short_filter.bias").to(z.dtype), groups: z.size(1));
        return filtered.chunk(Options.Order + 1, 1);
    }

    /// <summary><paramref name="real"/> [B, T] as [B, 1…, T] with <paramref name="dims"/> dimensions, to mask streams [B, C, …, T].</summary>
    static Tensor RealAlongTime(Tensor real, int dims)
    {
        var shape = Enumerable.Repeat(1L, dims).ToArray();
        (shape[0], shape[^1]) = (real.size(0), real.size(1));
        return real.view(shape);
    }

    /// <summary>What the long filter convolves, from the gate k = x_1 and v, each [B, D, rest…]: Hyena's k ⊙ v [B, D, rest…]
    /// or MultiHyena's per-head outer product Z[i, j] = k_i v_j, [B, M, N, N, rest…].</summary>
    Tensor PreGate(Tensor k, Tensor v)
    {
        if (Options.Heads == 0) return k * v;
        return ByHead(k).unsqueeze(3) * ByHead(v).unsqueeze(2);
    }

    /// <summary>The output gate q = x_0 [B, D, rest…] on the mixed streams: Hyena's q ⊙ m, or MultiHyena's contraction over the
    /// k index y_j = Σ_i q_i W[i, j] (pitfall 7: a matrix–vector product), back to [B, D, rest…].</summary>
    Tensor PostGate(Tensor q, Tensor mixed) =>
        Options.Heads == 0 ? q * mixed : (ByHead(q).unsqueeze(3) * mixed).sum(2).flatten(1, 2);

    /// <summary>[B, D, rest…] as [B, M, N, rest…] (a view).</summary>
    Tensor ByHead(Tensor x) => x.unflatten(1, Options.Heads, Options.Width / Options.Heads);

    /// <summary>The skip β (order 2) as [C, 1…] to broadcast against a pre-gated tensor [B, C, …].</summary>
    Tensor Beta(Tensor pre) =>
        W("filter_fn.bias").to(pre.dtype).view(new[] { (long)Options.FilterChannels }.Concat(Enumerable.Repeat(1L, (int)pre.dim() - 2)).ToArray());

    Tensor OutProject(Tensor y) => Linear.Apply(y.dim() == 3 ? y.transpose(1, 2) : y, W("out_proj.weight"), W("out_proj.bias"));

    Tensor W(string name) => weight(name);

    void RequireOrder2(ModalRecurrence recurrence)
    {
        if (Options.Order != 2) throw new NotSupportedException($"recurrent Hyena is implemented for order 2 (one long convolution), not {Options.Order}.");
        if (recurrence.Filters.Channels != Options.FilterChannels)
            throw new ArgumentException($"the distilled bank has {recurrence.Filters.Channels} filters; the operator convolves {Options.FilterChannels}.", nameof(recurrence));
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (owned is null) return;
        foreach (var t in owned.Values) t.Dispose();
        basis.Dispose();
    }
}

/// <summary>
/// What an operator's implicit filters are computed from besides its learned weights, fixed by the options (brief §1.2):
/// the positional features PosEmb(t) = [t_norm, cos(f_k ω_t), −sin(f_k ω_t)] [1, L_max, E] and the decay window
/// exp(−|δ_c| t_norm) + shift [1, L_max, C(N−1)]. One per model: every layer of a language model shares it.
/// </summary>
internal sealed class HyenaFilterBasis : IDisposable
{
    HyenaFilterBasis(Tensor features, Tensor window) => (Features, Window) = (features, window);

    /// <summary>PosEmb(t), [1, L_max, E].</summary>
    public Tensor Features { get; }

    /// <summary>The decay window, [1, L_max, C(N−1)].</summary>
    public Tensor Window { get; }

    /// <summary>The basis of <paramref name="options"/> in <paramref name="dtype"/> on <paramref name="device"/> (computed in fp32).</summary>
    public static HyenaFilterBasis Create(HyenaOptions options, ScalarType dtype, Device device)
    {
        using var scope = torch.NewDisposeScope();
        int l = options.MaxLength, bands = (options.EmbedDim - 1) / 2, filters = options.FilterChannels * (options.Order - 1);
        // ω_t = 2πt/L, f_k = linspace(1e−4, B−1, B), B = (E−1)/2.
        var tNorm = torch.linspace(0, 1, l).view(1, l, 1);
        var omega = torch.arange(l, ScalarType.Float32).view(1, l, 1) * (2 * Math.PI / l);
        var fk = torch.linspace(1e-4, bands - 1, bands).view(1, 1, bands);
        var features = torch.cat(new[] { tNorm, (fk * omega).cos(), -(fk * omega).sin() }, 2);
        // δ_c = linspace(ln(target)/slow, ln(target)/fast) over the C(N−1) filter channels; |δ| is used.
        var deltas = torch.linspace(Math.Log(options.DecayTarget) / options.SlowDecay, Math.Log(options.DecayTarget) / options.FastDecay, filters);
        var window = (-deltas.abs() * tNorm).exp() + options.DecayShift;
        return new HyenaFilterBasis(features.to(dtype, device).DetachFromDisposeScope(), window.to(dtype, device).DetachFromDisposeScope());
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Features.Dispose();
        Window.Dispose();
    }
}

/// <summary>
/// A distilled order-2 Hyena layer's state for a batch after some tokens: <paramref name="Fir"/> [B, 3D, 2] the last two
/// in-projected rows z_{t−2}, z_{t−1} (before the short conv, activation type), and <paramref name="Modal"/> the complex modal
/// state after the last token, [B, D, S] (Hyena) or [B, M, N, N, S] (MultiHyena, N = D/M). Both are updated in place by <see cref="HyenaOperator.Step"/>; the caller owns them.
/// </summary>
public sealed record HyenaState(Tensor Fir, Tensor Modal) : IDisposable
{
    /// <inheritdoc />
    public void Dispose()
    {
        Fir.Dispose();
        Modal.Dispose();
    }
}
