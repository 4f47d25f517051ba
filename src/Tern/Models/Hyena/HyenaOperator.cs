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
/// convolves k vᵀ, and y = Wᵀq per head. Weights are plain tensors named as safari's state dict; the operator owns them.
/// For order 2, <see cref="Prefill"/> and <see cref="Step"/> run the distilled layer recurrently.
/// </summary>
public sealed class HyenaOperator : IDisposable
{
    readonly Dictionary<string, Tensor> _weights;

    HyenaOperator(HyenaOptions options, Dictionary<string, Tensor> weights) => (Options, _weights) = (options, weights);

    /// <summary>The shape and filter settings.</summary>
    public HyenaOptions Options { get; }

    /// <summary>The weights by safari's names (in_proj, short_filter, filter_fn.*, out_proj).</summary>
    public IReadOnlyDictionary<string, Tensor> Weights => _weights;

    /// <summary>
    /// A freshly initialised operator in fp32 on the CPU, drawn from <paramref name="generator"/>: linear maps and the short conv
    /// as PyTorch's defaults (U(±1/√fan_in) weights and biases), β ~ N(0, 1), sine frequencies w, positional features and decay
    /// rates as safari fixes them.
    /// </summary>
    public static HyenaOperator Create(HyenaOptions options, torch.Generator generator)
    {
        if (options.Order < 2) throw new ArgumentOutOfRangeException(nameof(options), options.Order, "Order must be at least 2.");
        if (options.EmbedDim < 3 || options.EmbedDim % 2 == 0) throw new ArgumentOutOfRangeException(nameof(options), options.EmbedDim, "EmbedDim must be odd and at least 3.");
        if (options.Heads > 0 && (options.Order != 2 || options.Width % options.Heads != 0))
            throw new ArgumentOutOfRangeException(nameof(options), options.Heads, $"MultiHyena needs order 2 and heads dividing the width {options.Width}.");
        using var scope = torch.NewDisposeScope();
        int d = options.Width, n = options.Order, f = options.FilterWidth, e = options.EmbedDim, l = options.MaxLength;
        int filters = options.FilterChannels * (n - 1);
        Tensor Uniform(long fanIn, params long[] shape) => torch.rand(shape, generator: generator).mul_(2).sub_(1).mul_(1 / Math.Sqrt(fanIn));
        var w = new Dictionary<string, Tensor>
        {
            ["in_proj.weight"] = Uniform(d, (n + 1) * d, d),
            ["in_proj.bias"] = Uniform(d, (n + 1) * d),
            ["short_filter.weight"] = Uniform(3, (n + 1) * d, 1, 3),
            ["short_filter.bias"] = Uniform(3, (n + 1) * d),
            ["out_proj.weight"] = Uniform(d, d, d),
            ["out_proj.bias"] = Uniform(d, d),
            ["filter_fn.bias"] = torch.randn(new long[] { filters }, generator: generator),
            ["filter_fn.implicit_filter.act.freq"] = torch.full(1, f, options.SineFrequency),
        };
        // PosEmb: z = [t_norm, cos(f_k ω_t), −sin(f_k ω_t)], ω_t = 2πt/L, f_k = linspace(1e−4, B−1, B), B = (E−1)/2.
        int bands = (e - 1) / 2;
        var tNorm = torch.linspace(0, 1, l).view(1, l, 1);
        var omega = torch.arange(l, ScalarType.Float32).view(1, l, 1) * (2 * Math.PI / l);
        var fk = torch.linspace(1e-4, bands - 1, bands).view(1, 1, bands);
        w["filter_fn.pos_emb.z"] = torch.cat(new[] { tNorm, (fk * omega).cos(), -(fk * omega).sin() }, 2);
        w["filter_fn.pos_emb.t"] = tNorm;
        int layer = 0;
        w[$"filter_fn.implicit_filter.{layer}.weight"] = Uniform(e, f, e);
        w[$"filter_fn.implicit_filter.{layer}.bias"] = Uniform(e, f);
        for (int i = 0; i < options.InnerLayers; i++)
        {
            layer += 2; // safari's Sequential: Linear, Sin, Linear, Sin, …
            w[$"filter_fn.implicit_filter.{layer}.weight"] = Uniform(f, f, f);
            w[$"filter_fn.implicit_filter.{layer}.bias"] = Uniform(f, f);
        }
        w[$"filter_fn.implicit_filter.{layer + 2}.weight"] = Uniform(f, filters, f);
        // δ_c = linspace(ln(target)/slow, ln(target)/fast) over the D(N−1) filter channels; |δ| is used.
        w["filter_fn.modulation.deltas"] = torch.linspace(Math.Log(options.DecayTarget) / options.SlowDecay, Math.Log(options.DecayTarget) / options.FastDecay, filters);
        foreach (var t in w.Values) t.DetachFromDisposeScope();
        return new HyenaOperator(options, w);
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
        var freq = W("filter_fn.implicit_filter.act.freq");
        Tensor Sin(Tensor x) => (freq * x).sin();   // one shared Sin module (and frequency vector) in safari's FFN
        var h = Sin(F.linear(W("filter_fn.pos_emb.z"), W("filter_fn.implicit_filter.0.weight"), W("filter_fn.implicit_filter.0.bias")));
        int layer = 0;
        for (int i = 0; i < Options.InnerLayers; i++)
        {
            layer += 2;
            h = Sin(F.linear(h, W($"filter_fn.implicit_filter.{layer}.weight"), W($"filter_fn.implicit_filter.{layer}.bias")));
        }
        h = F.linear(h, W($"filter_fn.implicit_filter.{layer + 2}.weight"));                           // [1, L_max, D(N−1)]
        var window = (-W("filter_fn.modulation.deltas").abs() * W("filter_fn.pos_emb.t")).exp() + Options.DecayShift;
        h = (h * window).narrow(1, 0, length);
        return h.view(length, Options.Order - 1, Options.FilterChannels).permute(1, 2, 0).contiguous().MoveToOuterDisposeScope(); // 'l (o d) -> o d l'
    }

    /// <summary>The operator on <paramref name="input"/> u [B, L, D] with its own implicit filters.</summary>
    public Tensor Forward(Tensor input)
    {
        using var scope = torch.NewDisposeScope();
        return Forward(input, Filters((int)input.shape[1])).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The operator on <paramref name="input"/> u [B, L, D] with the given long filters [N−1, D or M, ≥ L] (its own, or distilled
    /// kernels ĥ: the distilled layer in convolution mode), the long convolutions by FFT zero-padded to ≥ 2L.
    /// </summary>
    public Tensor Forward(Tensor input, Tensor filters)
    {
        using var scope = torch.NewDisposeScope();
        var (streams, _) = Project(input);
        int n = Options.Order;
        if (n == 2)
        {
            var pre = PreGate(streams[1], streams[2]);
            var kernel = filters[0].narrow(-1, 0, input.shape[1]);
            var conv = LongConvolution.Causal(pre, kernel.view(new[] { kernel.shape[0] }.Concat(Enumerable.Repeat(1L, (int)pre.dim() - 3)).Append(kernel.shape[1]).ToArray()));
            return OutProject(PostGate(streams[0], conv + Beta(pre) * pre)).MoveToOuterDisposeScope();
        }
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
        using var scope = torch.NewDisposeScope();
        var (streams, projected) = Project(input);
        var w = PreGate(streams[1], streams[2]).to(recurrence.OutputType);                         // [B, D, T] or [B, M, N, N, T]
        var y = PostGate(streams[0], (recurrence.Convolve(w) + Beta(w) * w).to(input.dtype));
        long t = projected.shape[2];
        var fir = t >= 2 ? projected.narrow(2, t - 2, 2) : F.pad(projected, new long[] { 2 - t, 0 });  // z_{T−2}, z_{T−1}
        var state = new HyenaState(fir.contiguous().MoveToOuterDisposeScope(), recurrence.Prefill(w).MoveToOuterDisposeScope());
        return (OutProject(y).MoveToOuterDisposeScope(), state);
    }

    /// <summary>
    /// Order 2, distilled: one token u [B, D] → output [B, D], updating <paramref name="state"/> in place:
    /// z̃ = W₀z_{t−2} + W₁z_{t−1} + W₂z_t + b; w = x1 ⊙ v; s ← λs + w; y = x0 ⊙ (Re Σ R s + D w + β w); out = y·W_outᵀ + b_out.
    /// </summary>
    public Tensor Step(Tensor input, HyenaState state, ModalRecurrence recurrence)
    {
        RequireOrder2(recurrence);
        using var scope = torch.NewDisposeScope();
        var z = F.linear(input, W("in_proj.weight"), W("in_proj.bias"));                               // [B, 3D]
        var taps = W("short_filter.weight").squeeze(1);                                                 // [3D, 3]
        var window = torch.cat(new[] { state.Fir, z.unsqueeze(2) }, 2);                                 // z_{t−2}, z_{t−1}, z_t
        var filtered = (window * taps).sum(2) + W("short_filter.bias");
        state.Fir.copy_(window.narrow(2, 1, 2));
        var parts = filtered.chunk(3, 1);
        var w = PreGate(parts[1], parts[2]).to(recurrence.OutputType);
        var conv = recurrence.Step(state.Modal, w);
        var y = PostGate(parts[0], (conv + Beta(w) * w).to(input.dtype));
        return OutProject(y).MoveToOuterDisposeScope();
    }

    /// <summary>The N + 1 streams [x_0, …, x_{N−1}, v], each [B, D, L] (after the short conv), and the projection z [B, (N+1)D, L].</summary>
    (Tensor[] Streams, Tensor Projected) Project(Tensor input)
    {
        long length = input.shape[1];
        var z = F.linear(input, W("in_proj.weight"), W("in_proj.bias")).transpose(1, 2);             // [B, (N+1)D, L]
        long channels = z.shape[1];
        var filtered = F.conv1d(z, W("short_filter.weight"), W("short_filter.bias"), padding: 2, groups: channels).narrow(2, 0, length);
        return (filtered.chunk(Options.Order + 1, 1), z);
    }

    /// <summary>What the long filter convolves, from the gate k = x_1 and v, each [B, D, rest…]: Hyena's k ⊙ v [B, D, rest…]
    /// or MultiHyena's per-head outer product Z[i, j] = k_i v_j, [B, M, N, N, rest…].</summary>
    Tensor PreGate(Tensor k, Tensor v)
    {
        if (Options.Heads == 0) return k * v;
        var shape = HeadShape(k);
        return k.view(shape).unsqueeze(3) * v.view(shape).unsqueeze(2);
    }

    /// <summary>The output gate q = x_0 [B, D, rest…] on the mixed streams: Hyena's q ⊙ m, or MultiHyena's contraction over the
    /// k index y_j = Σ_i q_i W[i, j] (pitfall 7: a matrix–vector product), back to [B, D, rest…].</summary>
    Tensor PostGate(Tensor q, Tensor mixed) =>
        Options.Heads == 0 ? q * mixed : (q.view(HeadShape(q)).unsqueeze(3) * mixed).sum(2).reshape(q.shape);

    /// <summary>[B, D, rest…] as [B, M, N, rest…].</summary>
    long[] HeadShape(Tensor x) =>
        new[] { x.shape[0], Options.Heads, Options.Width / Options.Heads }.Concat(x.shape[2..]).ToArray();

    /// <summary>The skip β (order 2) as [C, 1…] to broadcast against a pre-gated tensor [B, C, …].</summary>
    Tensor Beta(Tensor pre) =>
        W("filter_fn.bias").to(pre.dtype).view(new[] { (long)Options.FilterChannels }.Concat(Enumerable.Repeat(1L, (int)pre.dim() - 2)).ToArray());

    Tensor OutProject(Tensor y) => F.linear(y.dim() == 3 ? y.transpose(1, 2) : y, W("out_proj.weight"), W("out_proj.bias"));

    Tensor W(string name) => _weights[name];

    void RequireOrder2(ModalRecurrence recurrence)
    {
        if (Options.Order != 2) throw new NotSupportedException($"recurrent Hyena is implemented for order 2 (one long convolution), not {Options.Order}.");
        if (recurrence.Filters.Channels != Options.FilterChannels)
            throw new ArgumentException($"the distilled bank has {recurrence.Filters.Channels} filters; the operator convolves {Options.FilterChannels}.", nameof(recurrence));
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var t in _weights.Values) t.Dispose();
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
