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

/// <summary>JoMA's two toy dynamics: the linear case, where the attention logits follow the MLP weights through an invariant,
/// and the nonlinear toy, where attention first becomes sparse and then denser.</summary>
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
        // X[l, c] = P(contextual token l | class c), columns summing to 1; W [d, K] and z [M_c] start at N(0, 1)/100.
        double[,] x = new double[mc, k];
        double[] w, z;
        using (var generator = new Generator((ulong)options.Seed))
        using (var scope = torch.NewDisposeScope())
        {
            var draws = torch.rand(mc, k, ScalarType.Float64, generator: generator) / 2;
            for (int l = 0; l < mc; l++)
                for (int c = 0; c < k; c++)
                    x[l, c] = options.GaussianDistinct && l < options.Distinct
                        ? Math.Exp(-Math.Pow(l - (double)c / k * options.Distinct, 2) / 30) // a bump that moves with the class
                        : draws[l, c].item<double>();
            w = (torch.randn(d, k, ScalarType.Float64, generator: generator) / 100).data<double>().ToArray();
            z = (torch.randn(mc, ScalarType.Float64, generator: generator) / 100).data<double>().ToArray();
        }
        for (int c = 0; c < k; c++)
        {
            double column = Enumerable.Range(0, mc).Sum(l => x[l, c]);
            for (int l = 0; l < mc; l++) x[l, c] /= column;
        }
        var xbar = Enumerable.Range(0, mc).Select(l => Enumerable.Range(0, k).Average(c => x[l, c])).ToArray();

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
            // b_c = exp(z/τ) ⊙ x_c / Σ_l exp(z_l/τ) x_lc;  f_c = U_C b_c + u_q (residual);  logits o = Wᵀ f_c; CE with label c
            var b = Softmax(z.Select((v, l) => v / tau + Math.Log(x[l, c])).ToArray());
            Array.Clear(f);
            Array.Copy(b, f, mc);
            f[mc] = 1;
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
            double mean = b.Zip(gb, (a, g) => a * g).Sum();
            for (int l = 0; l < mc; l++) gradZ[l] += b[l] * (gb[l] - mean) / tau;
        }
        return total / k;
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
