using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Labs;

/// <summary>JoMA's linear-case simulation (Tian et al. 2023, arXiv 2310.00535, Figs. 2–3; the official
/// <c>joma/draw_figure_2_3.py</c>): one query token, M_c contextual tokens with identity embeddings, attention logits z and an
/// MLP weight W trained jointly by SGD on cross-entropy. Defaults are the script's (its draws come from PyTorch's global
/// generator, ours from a seeded one: the invariant does not depend on them).</summary>
public sealed record JomaLinearOptions
{
    /// <summary>Distinct contextual tokens (their class-conditional probabilities differ by class).</summary>
    public int Distinct { get; init; } = 10;
    /// <summary>Common contextual tokens.</summary>
    public int Common { get; init; } = 10;
    /// <summary>Classes K (also the MLP's output width).</summary>
    public int Classes { get; init; } = 20;
    /// <summary>Embedding dimension d (≥ M_c + 1: the embeddings are the first columns of the identity).</summary>
    public int Dimension { get; init; } = 30;
    /// <summary>Attention temperature τ.</summary>
    public double Temperature { get; init; } = 0.5;
    /// <summary>SGD learning rate (no momentum).</summary>
    public double LearningRate { get; init; } = 0.1;
    /// <summary>SGD steps.</summary>
    public int Steps { get; init; } = 2000;
    /// <summary>Distinct tokens' probabilities as Gaussian bumps moving with the class (the paper's left panel); otherwise
    /// U(0, 0.5) like the common ones.</summary>
    public bool GaussianDistinct { get; init; } = true;
    /// <summary>Seeds X, W(0) and z(0).</summary>
    public long Seed { get; init; } = 1;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        if (Distinct < 1 || Common < 0) throw new ArgumentException($"need {nameof(Distinct)} ≥ 1 and {nameof(Common)} ≥ 0 (got {Distinct}, {Common}).");
        if (Classes < 2) throw new ArgumentException($"{nameof(Classes)} must be at least 2 (got {Classes}).");
        if (Dimension < Distinct + Common + 1)
            throw new ArgumentException($"{nameof(Dimension)} must hold the {Distinct + Common} contextual tokens and the query (≥ {Distinct + Common + 1}, got {Dimension}).");
        if (!(Temperature > 0) || !(LearningRate > 0) || Steps < 1)
            throw new ArgumentException("temperature and learning rate must be positive and steps at least 1.");
    }
}

/// <summary>A linear-case run. <paramref name="Invariant"/>[t] = NC(z(t), ẑ(t)), the normalised correlation of the logits with
/// the invariant's prediction; <paramref name="SquaredPart"/> and <paramref name="NormPart"/> with its two terms alone.
/// <paramref name="Attention"/>[t] = softmax(z(t)/τ); <paramref name="FirstClassWeights"/>[t] = v_0(t) = U_Cᵀ w_0(t).</summary>
public sealed record JomaLinearRun(JomaLinearOptions Options, double[] Invariant, double[] SquaredPart, double[] NormPart,
    double[] Loss, double[][] Attention, double[][] FirstClassWeights);

/// <summary>The MLP's activation in JoMA's nonlinear case.</summary>
public enum JomaActivation
{
    /// <summary>max(0, p), the paper's (and its WikiText models') MLP activation.</summary>
    Relu,
    /// <summary>p·σ(p), a smooth one.</summary>
    Silu,
}

/// <summary>JoMA's nonlinear case with the attention logits trained, not integrated out: the linear case's recipe
/// (<see cref="Recipe"/>: data, embeddings, τ, SGD, steps, seed) with a two-layer MLP on top of the attention output,
/// logits = Aᵀ φ(Wᵀ f), W [d, <see cref="Hidden"/>] and A [<see cref="Hidden"/>, K] trained jointly with z. With Hidden = K the
/// draws of X, W(0) and z(0) are the linear case's; A(0) ~ N(0, 1)/√Hidden comes after them.</summary>
public sealed record JomaNonlinearCaseOptions
{
    /// <summary>Data, embeddings, temperature, learning rate, steps and seed: the linear case's.</summary>
    public JomaLinearOptions Recipe { get; init; } = new();
    /// <summary>Hidden units j (the w_j whose projections v_j = U_Cᵀ w_j enter the invariant).</summary>
    public int Hidden { get; init; } = 20;
    /// <summary>The hidden layer's activation φ.</summary>
    public JomaActivation Activation { get; init; } = JomaActivation.Relu;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        Recipe.Validate();
        if (Hidden < 1) throw new ArgumentException($"{nameof(Hidden)} must be at least 1 (got {Hidden}).");
    }
}

/// <summary>A nonlinear-case run. <paramref name="Invariant"/>[t] = NC(z(t), ẑ(t)) as in the linear case (ẑ(0) = z(0));
/// <paramref name="Change"/>[t] = NC(z(t) − z(0), ẑ(t) − ẑ(0)), the stricter check of what moved (0 at t = 0, where nothing has);
/// <paramref name="SquaredChange"/>[t] the same with ẑ's (1/2τ) Σ_j Δ(v_j²) term alone. <paramref name="Attention"/>[t] =
/// softmax(z(t)/τ).</summary>
public sealed record JomaNonlinearCaseRun(JomaNonlinearCaseOptions Options, double[] Invariant, double[] Change, double[] SquaredChange,
    double[] Loss, double[][] Attention)
{
    /// <summary>The lowest <see cref="Change"/> after step 0.</summary>
    public double MinChange => Change.Skip(1).Min();
    /// <summary>The lowest <see cref="SquaredChange"/> after step 0.</summary>
    public double MinSquaredChange => SquaredChange.Skip(1).Min();
}

/// <summary>JoMA's nonlinear toy (Fig. 4; the official <c>joma/draw_figure_4.py</c>): one hidden unit whose attention has been
/// integrated out, v ← v + η (μ − v) ⊙ softmax(v²/T). Defaults are the script's: μ = sort(3·r + 1), r the first ten
/// <c>torch.rand</c> draws after seed 0; v(0) = 0.05·1.</summary>
public sealed record JomaNonlinearOptions
{
    /// <summary>Components of v.</summary>
    public int Components { get; init; } = 10;
    /// <summary>Step size η.</summary>
    public double StepSize { get; init; } = 0.02;
    /// <summary>Temperature T.</summary>
    public double Temperature { get; init; } = 3;
    /// <summary>Steps.</summary>
    public int Steps { get; init; } = 5000;
    /// <summary>Initial value of every component.</summary>
    public double Initial { get; init; } = 0.05;
    /// <summary>Seed of the target μ.</summary>
    public long Seed { get; init; } = 0;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        if (Components < 2) throw new ArgumentException($"{nameof(Components)} must be at least 2 (got {Components}).");
        if (!(StepSize > 0) || !(Temperature > 0) || Steps < 1) throw new ArgumentException("step size and temperature must be positive and steps at least 1.");
    }
}

/// <summary>A nonlinear-toy run: the target μ, and per step the attention's entropy and v.</summary>
public sealed record JomaNonlinearRun(JomaNonlinearOptions Options, double[] Target, double[] Entropy, double[][] V)
{
    /// <summary>The step where the entropy is lowest: attention at its sparsest, before it becomes denser again.</summary>
    public int SparsestStep => Array.IndexOf(Entropy, Entropy.Min());
}

/// <summary>JoMA's toy dynamics: the linear case and the nonlinear case (a ReLU MLP), where the attention logits follow the MLP
/// weights through an invariant, and the nonlinear toy, where attention first becomes sparse and then denser.</summary>
public static class Joma
{
    /// <summary>Trains the linear case and tracks the invariant (paper Theorem 1, linear activation):
    /// <code>z(t) = z(0) + (1/2τ) Σ_j [ v_j(t)² − v_j(0)² − x̄ (‖w_j(t)‖² − ‖w_j(0)‖²) ],  v_j = U_Cᵀ w_j</code>
    /// with x̄ the class-averaged contextual distribution. fp64, exact hand-written gradients of the script's loss.</summary>
    public static JomaLinearRun RunLinear(JomaLinearOptions options)
    {
        options.Validate();
        int mc = options.Distinct + options.Common, k = options.Classes, d = options.Dimension, steps = options.Steps;
        double tau = options.Temperature, lr = options.LearningRate;
        var (x, xbar, w, z, _) = Draw(options, k, top: false);

        // The embeddings are the identity's columns (U_C: contextual tokens, then u_q), so v_j = U_Cᵀ w_j is w_j's first M_c rows.
        (double[] Squared, double[] Norm) Predicted()
        {
            double total = w.Sum(v => v * v);
            var squared = Enumerable.Range(0, mc).Select(l => Enumerable.Range(0, k).Sum(j => w[l * k + j] * w[l * k + j]) / (2 * tau)).ToArray();
            return (squared, xbar.Select(v => -v * total / (2 * tau)).ToArray());
        }
        var (s0, n0) = Predicted();
        var constant = z.Select((v, l) => v - s0[l] - n0[l]).ToArray();

        var invariant = new double[steps];
        var squaredPart = new double[steps];
        var normPart = new double[steps];
        var loss = new double[steps];
        var attention = new double[steps][];
        var firstClass = new double[steps][];
        var gradW = new double[d * k];
        var gradZ = new double[mc];
        for (int t = 0; t < steps; t++)
        {
            var (s, n) = Predicted();
            invariant[t] = NormalizedCorrelation(z, s.Select((v, l) => v + n[l] + constant[l]).ToArray());
            squaredPart[t] = NormalizedCorrelation(z, s);
            normPart[t] = NormalizedCorrelation(z, n);
            attention[t] = Softmax(z.Select(v => v / tau).ToArray());
            firstClass[t] = Enumerable.Range(0, mc).Select(l => w[l * k]).ToArray();

            loss[t] = LinearLossAndGradients(x, w, z, d, tau, gradW, gradZ);
            for (int i = 0; i < w.Length; i++) w[i] -= lr * gradW[i];
            for (int l = 0; l < mc; l++) z[l] -= lr * gradZ[l];
        }
        return new JomaLinearRun(options, invariant, squaredPart, normPart, loss, attention, firstClass);
    }

    /// <summary>The linear recipe's draws, in the official script's order: X (columns normalised to 1; Gaussian bumps for the
    /// distinct tokens if asked), W(0) [d, <paramref name="hidden"/>] and z(0) at N(0, 1)/100, then (if <paramref name="top"/>)
    /// a top layer [hidden, K] at N(0, 1)/√hidden. Also x̄, X's class average.</summary>
    static (double[,] X, double[] Xbar, double[] W, double[] Z, double[] Top) Draw(JomaLinearOptions options, int hidden, bool top)
    {
        int mc = options.Distinct + options.Common, k = options.Classes, d = options.Dimension;
        // X[l, c] = P(contextual token l | class c), columns summing to 1; W [d, hidden] and z [M_c] start at N(0, 1)/100.
        double[,] x = new double[mc, k];
        double[] w, z, a = [];
        using (var generator = new Generator((ulong)options.Seed))
        using (var scope = torch.NewDisposeScope())
        {
            var draws = torch.rand(mc, k, ScalarType.Float64, generator: generator) / 2;
            for (int l = 0; l < mc; l++)
                for (int c = 0; c < k; c++)
                    x[l, c] = options.GaussianDistinct && l < options.Distinct
                        ? Math.Exp(-Math.Pow(l - (double)c / k * options.Distinct, 2) / 30) // a bump that moves with the class
                        : draws[l, c].item<double>();
            w = (torch.randn(d, hidden, ScalarType.Float64, generator: generator) / 100).data<double>().ToArray();
            z = (torch.randn(mc, ScalarType.Float64, generator: generator) / 100).data<double>().ToArray();
            if (top) a = (torch.randn(hidden, k, ScalarType.Float64, generator: generator) / Math.Sqrt(hidden)).data<double>().ToArray();
        }
        for (int c = 0; c < k; c++)
        {
            double column = Enumerable.Range(0, mc).Sum(l => x[l, c]);
            for (int l = 0; l < mc; l++) x[l, c] /= column;
        }
        var xbar = Enumerable.Range(0, mc).Select(l => Enumerable.Range(0, k).Average(c => x[l, c])).ToArray();
        return (x, xbar, w, z, a);
    }

    /// <summary>The linear case's loss, mean cross-entropy over the K classes (one long-sequence sample each), and its exact
    /// gradients into <paramref name="gradW"/> ([d, K] row-major) and <paramref name="gradZ"/>.</summary>
    internal static double LinearLossAndGradients(double[,] x, double[] w, double[] z, int d, double tau, double[] gradW, double[] gradZ)
    {
        int mc = x.GetLength(0), k = x.GetLength(1);
        Array.Clear(gradW);
        Array.Clear(gradZ);
        var f = new double[d];
        var o = new double[k];
        double total = 0;
        for (int c = 0; c < k; c++)
        {
            // logits o = Wᵀ f_c; CE with label c
            var b = Attend(x, z, tau, c, f);
            for (int j = 0; j < k; j++) o[j] = Enumerable.Range(0, d).Sum(i => f[i] * w[i * k + j]);
            var p = Softmax(o);
            total -= Math.Log(p[c]);
            // g_o = (softmax(o) − e_c)/K;  dW += f g_oᵀ;  g_b = (W g_o)[:M_c];  dz_l += b_l (g_b,l − b·g_b) / τ
            for (int j = 0; j < k; j++) o[j] = (p[j] - (j == c ? 1 : 0)) / k;
            var gb = new double[mc];
            for (int i = 0; i < d; i++)
                for (int j = 0; j < k; j++)
                {
                    gradW[i * k + j] += f[i] * o[j];
                    if (i < mc) gb[i] += w[i * k + j] * o[j];
                }
            AddAttentionGradient(b, gb, tau, gradZ);
        }
        return total / k;
    }

    /// <summary>Trains the nonlinear case (<see cref="JomaNonlinearCaseOptions"/>) and tracks the invariant of the softmax-attention
    /// logits (the linear case's form, ‖v_j‖² in place of ‖w_j‖²), here with a nonlinear MLP (paper Theorem 1, nonlinear case):
    /// <code>z(t) = z(0) + (1/2τ) Σ_j [ v_j(t)² − v_j(0)² − x̄ (‖v_j(t)‖² − ‖v_j(0)‖²) ],  v_j = U_Cᵀ w_j</code>
    /// Derived from the model's gradient flow (the paper's text was not at hand): with G_jc = −∂L/∂p_jc, the pre-activation
    /// p_jc = w_jᵀ f_c of unit j on class c (φ′ and everything above the unit are inside G),
    /// <code>v̇_j = Σ_c G_jc b_c,   ż = (1/τ) Σ_jc G_jc b_c ⊙ (v_j − (v_j·b_c) 1)</code>
    /// so ż − (1/τ) Σ_j v_j ⊙ v̇_j = −(1/τ) Σ_jc G_jc (v_j·b_c) b_c exactly, for any φ; with b_c ≈ x̄ (attention near its start,
    /// the theorem's assumption) the right side is −(x̄/2τ) d/dt Σ_j ‖v_j‖². The first term is exact, the x̄ term is the
    /// approximation: it misses how b_c differs from x̄ (by class, and as z moves). (‖w_j‖², the linear script's, would add the
    /// query row's Σ_c G_jc w_j,q to d‖v_j‖²/2.) The toy of <see cref="RunNonlinear"/> cannot check this: it has z integrated out,
    /// softmax(v²/T) being the invariant already substituted. fp64, exact hand-written gradients.</summary>
    public static JomaNonlinearCaseRun RunNonlinearCase(JomaNonlinearCaseOptions options)
    {
        options.Validate();
        var recipe = options.Recipe;
        int mc = recipe.Distinct + recipe.Common, k = recipe.Classes, d = recipe.Dimension, h = options.Hidden, steps = recipe.Steps;
        double tau = recipe.Temperature, lr = recipe.LearningRate;
        var (x, xbar, w, z, a) = Draw(recipe, h, top: true);

        // (1/2τ) Σ_j v_j ⊙ v_j and Σ_j ‖v_j‖² (v_j = w_j's first M_c rows: the embeddings are the identity's columns).
        (double[] Squared, double Norm) Parts()
        {
            var squared = Enumerable.Range(0, mc).Select(l => Enumerable.Range(0, h).Sum(j => w[l * h + j] * w[l * h + j]) / (2 * tau)).ToArray();
            return (squared, squared.Sum() * 2 * tau);
        }
        var (s0, norm0) = Parts();
        var z0 = (double[])z.Clone();

        var invariant = new double[steps];
        var change = new double[steps];
        var squaredChange = new double[steps];
        var loss = new double[steps];
        var attention = new double[steps][];
        var gradW = new double[d * h];
        var gradA = new double[h * k];
        var gradZ = new double[mc];
        for (int t = 0; t < steps; t++)
        {
            var (s, norm) = Parts();
            var dz = z.Select((v, l) => v - z0[l]).ToArray();
            var ds = s.Select((v, l) => v - s0[l]).ToArray();
            var predicted = ds.Select((v, l) => v - xbar[l] * (norm - norm0) / (2 * tau)).ToArray(); // ẑ − ẑ(0)
            invariant[t] = NormalizedCorrelation(z, predicted.Select((v, l) => v + z0[l]).ToArray());
            change[t] = NormalizedCorrelation(dz, predicted);
            squaredChange[t] = NormalizedCorrelation(dz, ds);
            attention[t] = Softmax(z.Select(v => v / tau).ToArray());

            loss[t] = NonlinearLossAndGradients(x, w, a, z, d, tau, options.Activation, gradW, gradA, gradZ);
            for (int i = 0; i < w.Length; i++) w[i] -= lr * gradW[i];
            for (int i = 0; i < a.Length; i++) a[i] -= lr * gradA[i];
            for (int l = 0; l < mc; l++) z[l] -= lr * gradZ[l];
        }
        return new JomaNonlinearCaseRun(options, invariant, change, squaredChange, loss, attention);
    }

    /// <summary>The nonlinear case's loss, mean cross-entropy over the K classes of logits Aᵀ φ(Wᵀ f_c), and its exact gradients
    /// into <paramref name="gradW"/> ([d, H] row-major), <paramref name="gradA"/> ([H, K]) and <paramref name="gradZ"/>.</summary>
    internal static double NonlinearLossAndGradients(double[,] x, double[] w, double[] a, double[] z, int d, double tau, JomaActivation activation,
        double[] gradW, double[] gradA, double[] gradZ)
    {
        int mc = x.GetLength(0), k = x.GetLength(1), h = w.Length / d;
        Array.Clear(gradW);
        Array.Clear(gradA);
        Array.Clear(gradZ);
        var f = new double[d];
        var p = new double[h];
        var hidden = new double[h];
        var gp = new double[h];
        var o = new double[k];
        double total = 0;
        for (int c = 0; c < k; c++)
        {
            // p = Wᵀ f_c; hidden = φ(p); logits o = Aᵀ hidden; CE with label c
            var b = Attend(x, z, tau, c, f);
            for (int j = 0; j < h; j++)
            {
                p[j] = 0;
                for (int i = 0; i <= mc; i++) p[j] += f[i] * w[i * h + j];
                hidden[j] = activation == JomaActivation.Relu ? Math.Max(p[j], 0) : p[j] / (1 + Math.Exp(-p[j]));
            }
            for (int m = 0; m < k; m++)
            {
                o[m] = 0;
                for (int j = 0; j < h; j++) o[m] += hidden[j] * a[j * k + m];
            }
            var q = Softmax(o);
            total -= Math.Log(q[c]);
            // g_o = (softmax(o) − e_c)/K;  dA += hidden g_oᵀ;  g_p = (A g_o) ⊙ φ′(p);  dW += f g_pᵀ;  g_b = (W g_p)[:M_c]
            for (int m = 0; m < k; m++) o[m] = (q[m] - (m == c ? 1 : 0)) / k;
            for (int j = 0; j < h; j++)
            {
                double g = 0;
                for (int m = 0; m < k; m++)
                {
                    g += a[j * k + m] * o[m];
                    gradA[j * k + m] += hidden[j] * o[m];
                }
                double sigmoid = 1 / (1 + Math.Exp(-p[j]));
                gp[j] = g * (activation == JomaActivation.Relu ? (p[j] > 0 ? 1 : 0) : sigmoid * (1 + p[j] * (1 - sigmoid)));
            }
            var gb = new double[mc];
            for (int i = 0; i <= mc; i++)
                for (int j = 0; j < h; j++)
                {
                    gradW[i * h + j] += f[i] * gp[j];
                    if (i < mc) gb[i] += w[i * h + j] * gp[j];
                }
            AddAttentionGradient(b, gb, tau, gradZ);
        }
        return total / k;
    }

    /// <summary>Class <paramref name="c"/>'s attention b_c = exp(z/τ) ⊙ x_c / Σ_l exp(z_l/τ) x_lc and the layer's output
    /// f_c = U_C b_c + u_q (the residual's query one-hot) written into <paramref name="f"/>; returns b_c.</summary>
    static double[] Attend(double[,] x, double[] z, double tau, int c, double[] f)
    {
        int mc = x.GetLength(0);
        var b = Softmax(z.Select((v, l) => v / tau + Math.Log(x[l, c])).ToArray());
        Array.Clear(f);
        Array.Copy(b, f, mc);
        f[mc] = 1;
        return b;
    }

    /// <summary>Back through the attention softmax: dz_l += b_l (g_b,l − b·g_b) / τ, given g_b = ∂L/∂b_c.</summary>
    static void AddAttentionGradient(double[] b, double[] gb, double tau, double[] gradZ)
    {
        double mean = b.Zip(gb, (u, g) => u * g).Sum();
        for (int l = 0; l < b.Length; l++) gradZ[l] += b[l] * (gb[l] - mean) / tau;
    }

    /// <summary>NC(a, b): cosine similarity after mean-centring (the official script's <c>norm_corr</c>, without its 1e-8).</summary>
    public static double NormalizedCorrelation(IReadOnlyList<double> a, IReadOnlyList<double> b)
    {
        double ma = a.Average(), mb = b.Average(), ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Count; i++)
        {
            ab += (a[i] - ma) * (b[i] - mb);
            aa += (a[i] - ma) * (a[i] - ma);
            bb += (b[i] - mb) * (b[i] - mb);
        }
        return aa == 0 || bb == 0 ? 0 : ab / Math.Sqrt(aa * bb);
    }

    static double[] Softmax(double[] logits)
    {
        double max = logits.Max();
        var e = logits.Select(v => Math.Exp(v - max)).ToArray();
        double sum = e.Sum();
        return e.Select(v => v / sum).ToArray();
    }

    /// <summary>Runs the nonlinear toy: a = softmax(v⊙v/T); v ← v + η (μ − v) ⊙ a; entropy H(a) per step (before the update).</summary>
    public static JomaNonlinearRun RunNonlinear(JomaNonlinearOptions options)
    {
        options.Validate();
        double[] target;
        using (var generator = new Generator((ulong)options.Seed))
        using (var scope = torch.NewDisposeScope())
            target = (torch.rand(options.Components, ScalarType.Float32, generator: generator) * 3 + 1).sort().Values
                .data<float>().Select(v => (double)v).ToArray();
        var v = Enumerable.Repeat(options.Initial, options.Components).ToArray();
        var entropy = new double[options.Steps];
        var history = new double[options.Steps][];
        for (int t = 0; t < options.Steps; t++)
        {
            history[t] = (double[])v.Clone();
            var a = Softmax(v.Select(c => c * c / options.Temperature).ToArray());
            entropy[t] = ScanSnap.Entropy(a);
            for (int i = 0; i < v.Length; i++) v[i] += options.StepSize * (target[i] - v[i]) * a[i];
        }
        return new JomaNonlinearRun(options, target, entropy, history);
    }
}
