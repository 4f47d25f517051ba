using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Labs;

/// <summary>A Scan &amp; Snap run (Tian et al. 2023, arXiv 2305.16380); defaults are the official Fig. 4 run, whose log the
/// run reproduces (<c>scan_snap/figure_4.log</c>: seed 2, T = 128, batch 128, η_Z = η_Y = 1, zero init).</summary>
public sealed record ScanSnapOptions
{
    /// <summary>The synthetic data.</summary>
    public SequenceClassOptions Data { get; init; } = new();
    /// <summary>Sequences per SGD step.</summary>
    public int BatchSize { get; init; } = 128;
    /// <summary>SGD steps.</summary>
    public int Iterations { get; init; } = 100;
    /// <summary>η_Z, the attention's learning rate.</summary>
    public double LearningRateZ { get; init; } = 1;
    /// <summary>η_Y, the decoder's learning rate (the paper sweeps η_Y/η_Z).</summary>
    public double LearningRateY { get; init; } = 1;
    /// <summary>SGD momentum (PyTorch semantics: buffer = μ·buffer + grad, the first buffer = grad).</summary>
    public double Momentum { get; init; } = 0.9;
    /// <summary>Start from Y = Z = 0 (Fig. 4); otherwise PyTorch's Linear default, U(−1/√M, 1/√M) (Fig. 6).</summary>
    public bool ZeroInit { get; init; } = true;
    /// <summary>The script's <c>seed</c>: Python's generator gets it, torch's gets seed + 2 (<c>common_utils.set_all_seeds</c>).</summary>
    public long Seed { get; init; } = 2;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        Data.Validate();
        if (BatchSize < 1) throw new ArgumentException($"{nameof(BatchSize)} must be at least 1 (got {BatchSize}).");
        if (Iterations < 1) throw new ArgumentException($"{nameof(Iterations)} must be at least 1 (got {Iterations}).");
        if (!(LearningRateZ > 0)) throw new ArgumentException($"{nameof(LearningRateZ)} must be positive (got {LearningRateZ}).");
        if (!(LearningRateY > 0)) throw new ArgumentException($"{nameof(LearningRateY)} must be positive (got {LearningRateY}).");
        if (Momentum is < 0 or >= 1) throw new ArgumentException($"{nameof(Momentum)} must be in [0, 1) (got {Momentum}).");
        if (Seed < 0) throw new ArgumentException($"{nameof(Seed)} must not be negative (got {Seed}).");
    }
}

/// <summary>What a run recorded.</summary>
/// <param name="Loss">Batch-mean loss of iteration t (before its step), t = 0 … Iterations−1, as the official log prints it.</param>
/// <param name="Weights">c_n per snapshot (after t steps, t = 0 … Iterations) and fact: the attention a long sequence of that
/// fact puts on each of its tokens, c_n(l) ∝ exp(Z[m,l])·P(l|m,n), in <see cref="SequenceFact.Tokens"/> order.</param>
public sealed record ScanSnapRun(ScanSnapOptions Options, SequenceClasses Data, double[] Loss, double[][][] Weights)
{
    /// <summary>Entropy of c_n, H = −Σ c log c, per snapshot and fact (uniform attention: the entropy of P(·|m,n)).</summary>
    public double[][] Entropy => Weights.Select(snapshot => snapshot.Select(ScanSnap.Entropy).ToArray()).ToArray();

    /// <summary>Entropy averaged over facts, per snapshot (the paper's Fig. 6 quantity at the last snapshot).</summary>
    public double[] MeanEntropy => Entropy.Select(e => e.Average()).ToArray();
}

/// <summary>
/// Scan &amp; Snap's reparameterised one-layer transformer (paper §3, the official <c>Model2</c>): with orthonormal embeddings
/// the network is two M×M matrices, Z (attention logits of query token m on key token l) and Y (decoder), trained by SGD with
/// exact hand-written gradients in fp64:
/// <code>
/// a_j = softmax_j Z[q, x_j]   (keys: the T−1 context tokens; no positions)
/// c   = Σ_j a_j e_{x_j},  f = c / ‖c‖,  o = Y f,  loss = −log softmax(o)[n]
/// </code>
/// </summary>
public static class ScanSnap
{
    /// <summary>Trains one run and records its loss and attention; <paramref name="progress"/> sees each iteration's loss.</summary>
    public static ScanSnapRun Run(ScanSnapOptions options, Action<int, double>? progress = null)
    {
        options.Validate();
        var data = SequenceClasses.Create(options.Data);
        int m = data.Vocabulary;
        // The official script's order of draws: Python seeded with seed, torch with seed + 2; both Linear layers (Y, then Z)
        // take their default init from torch's generator even when zeroed afterwards; then each batch draws.
        var random = new PythonRandom(options.Seed);
        using var generator = new Generator((ulong)options.Seed + 2);
        double[] y = DefaultLinearInit(m, generator), z = DefaultLinearInit(m, generator);
        if (options.ZeroInit) { Array.Clear(y); Array.Clear(z); }

        var state = new Model(m, y, z);
        var loss = new double[options.Iterations];
        var weights = new double[options.Iterations + 1][][];
        for (int t = 0; t < options.Iterations; t++)
        {
            weights[t] = Attention(data, z);
            var batch = data.Generate(options.BatchSize, random, generator);
            loss[t] = state.LossAndGradients(batch);
            state.Step(options);
            progress?.Invoke(t, loss[t]);
        }
        weights[options.Iterations] = Attention(data, z);
        return new ScanSnapRun(options, data, loss, weights);
    }

    /// <summary>H(p) = −Σ p log p (0 log 0 = 0).</summary>
    public static double Entropy(double[] p) => -p.Where(x => x > 0).Sum(x => x * Math.Log(x));

    /// <summary>PyTorch's <c>nn.Linear(M, M, bias=False)</c> weight, kaiming_uniform(a = √5) = U(−1/√M, 1/√M) in fp32, drawn
    /// from <paramref name="generator"/>; row-major [out, in].</summary>
    static double[] DefaultLinearInit(int m, Generator generator)
    {
        using var scope = torch.NewDisposeScope();
        var w = torch.empty(m, m, ScalarType.Float32);
        // torch.nn.init.kaiming_uniform_(w, a: √5): gain √(2/(1+a²)), bound √3·gain/√fan_in, computed as PyTorch does.
        double bound = Math.Sqrt(3.0) * (Math.Sqrt(2.0 / (1 + 5.0)) / Math.Sqrt(m));
        w.uniform_(-bound, bound, generator);
        return w.data<float>().Select(v => (double)v).ToArray();
    }

    /// <summary>c_n of every fact: c_n(l) ∝ exp(Z[m,l])·P(l|m,n) (the long-sequence limit of the attention).</summary>
    static double[][] Attention(SequenceClasses data, double[] z) => data.Facts.Select(f =>
    {
        int m = data.Vocabulary;
        var logits = f.Tokens.Select(l => z[f.Query * m + l]).ToArray();
        double max = logits.Max();
        var c = f.Tokens.Select((_, i) => Math.Exp(logits[i] - max) * f.Probabilities[i]).ToArray();
        double sum = c.Sum();
        return c.Select(v => v / sum).ToArray();
    }).ToArray();

    /// <summary>Y, Z, their gradients and momentum buffers, row-major M×M.</summary>
    sealed class Model(int m, double[] y, double[] z)
    {
        readonly double[] gradY = new double[m * m], gradZ = new double[m * m];
        double[]? bufferY, bufferZ;

        /// <summary>Mean loss over the batch; fills the gradients (batch means).</summary>
        public double LossAndGradients(SequenceBatch batch)
        {
            Array.Clear(gradY);
            Array.Clear(gradZ);
            int count = batch.Label.Length;
            double total = 0, scale = 1.0 / count;
            var tokenCount = new int[m];
            var o = new double[m];
            foreach (int b in Enumerable.Range(0, count))
            {
                int q = batch.Query[b];
                // Positions holding the same token share its logit Z[q,l], so the softmax over positions groups by token:
                // c_l = n_l·exp(Z[q,l]) / Σ_k n_k·exp(Z[q,k]), n_l = the token's count in the context.
                foreach (int l in batch.Context[b]) tokenCount[l]++;
                int[] support = batch.Context[b].Distinct().ToArray();
                double max = support.Max(l => z[q * m + l]);
                var c = support.Select(l => tokenCount[l] * Math.Exp(z[q * m + l] - max)).ToArray();
                foreach (int l in support) tokenCount[l] = 0;
                double sum = c.Sum();
                for (int i = 0; i < c.Length; i++) c[i] /= sum;
                double norm = Math.Sqrt(c.Sum(v => v * v));
                var f = c.Select(v => v / norm).ToArray(); // f = c/‖c‖, on the support
                // o = Y f; loss = −log softmax(o)[n]
                for (int i = 0; i < m; i++)
                {
                    double s = 0;
                    for (int k = 0; k < support.Length; k++) s += y[i * m + support[k]] * f[k];
                    o[i] = s;
                }
                double oMax = o.Max(), partition = o.Sum(v => Math.Exp(v - oMax));
                total += Math.Log(partition) + oMax - o[batch.Label[b]];
                // g_o = softmax(o) − e_n; dY += g_o fᵀ; g_f = Yᵀ g_o (on the support)
                for (int i = 0; i < m; i++) o[i] = (Math.Exp(o[i] - oMax) / partition - (i == batch.Label[b] ? 1 : 0)) * scale;
                var gf = new double[support.Length];
                for (int i = 0; i < m; i++)
                    for (int k = 0; k < support.Length; k++)
                    {
                        gradY[i * m + support[k]] += o[i] * f[k];
                        gf[k] += y[i * m + support[k]] * o[i];
                    }
                // g_c = (g_f − f (f·g_f)) / ‖c‖; dZ[q,l] = c_l (g_c[l] − Σ_k c_k g_c[k]) (softmax backward, grouped by token)
                double fg = f.Zip(gf, (a, g) => a * g).Sum();
                var gc = gf.Select((g, k) => (g - f[k] * fg) / norm).ToArray();
                double mean = c.Zip(gc, (a, g) => a * g).Sum();
                for (int k = 0; k < support.Length; k++) gradZ[q * m + support[k]] += c[k] * (gc[k] - mean);
            }
            return total / count;
        }

        /// <summary>One SGD-with-momentum step, η_Y on Y and η_Z on Z.</summary>
        public void Step(ScanSnapOptions options)
        {
            Momentum(y, gradY, ref bufferY, options.LearningRateY, options.Momentum);
            Momentum(z, gradZ, ref bufferZ, options.LearningRateZ, options.Momentum);
        }

        static void Momentum(double[] parameter, double[] gradient, ref double[]? buffer, double lr, double mu)
        {
            if (buffer is null) buffer = (double[])gradient.Clone();
            else for (int i = 0; i < buffer.Length; i++) buffer[i] = mu * buffer[i] + gradient[i];
            for (int i = 0; i < parameter.Length; i++) parameter[i] -= lr * buffer[i];
        }
    }
}
