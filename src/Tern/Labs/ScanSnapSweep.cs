namespace Tern.Labs;

/// <summary>A learning-rate sweep of Scan &amp; Snap (paper Fig. 6): every η_Z × η_Y/η_Z, several seeds each. Defaults are the
/// figure's setting for #last = 2: two next tokens per query token, PyTorch's default init, 100 iterations.</summary>
public sealed record ScanSnapSweepOptions
{
    /// <summary>The run every cell starts from (its learning rates and seed are replaced).</summary>
    public ScanSnapOptions Run { get; init; } = new() { ZeroInit = false, Seed = 1, Data = new SequenceClassOptions { NextPerLast = 2 } };
    /// <summary>η_Z values.</summary>
    public IReadOnlyList<double> LearningRatesZ { get; init; } = [0.5, 1, 2];
    /// <summary>η_Y/η_Z values.</summary>
    public IReadOnlyList<double> Ratios { get; init; } = [1, 2, 5, 10];
    /// <summary>Seeds per cell: <see cref="ScanSnapOptions.Seed"/> of <see cref="Run"/> and the ones after it.</summary>
    public int Seeds { get; init; } = 3;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        Run.Validate();
        if (LearningRatesZ.Count == 0 || LearningRatesZ.Any(v => !(v > 0))) throw new ArgumentException($"{nameof(LearningRatesZ)} must be positive values (at least one).");
        if (Ratios.Count == 0 || Ratios.Any(v => !(v > 0))) throw new ArgumentException($"{nameof(Ratios)} must be positive values (at least one).");
        if (Seeds < 1) throw new ArgumentException($"{nameof(Seeds)} must be at least 1 (got {Seeds}).");
    }
}

/// <summary>One cell of a sweep: the attention entropy H(c_n) averaged over facts, per seed and snapshot.</summary>
/// <param name="Entropy">[seed][snapshot t = 0 … Iterations].</param>
public sealed record ScanSnapSweepCell(double LearningRateZ, double Ratio, double[][] Entropy)
{
    /// <summary>Mean over seeds per snapshot.</summary>
    public double[] MeanEntropy => Enumerable.Range(0, Entropy[0].Length).Select(t => Entropy.Average(e => e[t])).ToArray();
    /// <summary>Mean over seeds of the last snapshot's entropy: where the snap froze the attention.</summary>
    public double Final => Entropy.Average(e => e[^1]);
    /// <summary>Standard deviation over seeds of <see cref="Final"/> (population; 0 for one seed).</summary>
    public double FinalStd => Math.Sqrt(Entropy.Average(e => (e[^1] - Final) * (e[^1] - Final)));
}

/// <summary>Runs Scan &amp; Snap learning-rate sweeps. The paper predicts the attention freezes ("snaps") sparser with a larger
/// η_Z and earlier — at a higher entropy — with a larger η_Y/η_Z (the decoder fits first and the attention stops moving).</summary>
public static class ScanSnapSweep
{
    /// <summary>Every cell in order (η_Z outer, ratio inner); <paramref name="progress"/> sees each as it finishes.</summary>
    public static IReadOnlyList<ScanSnapSweepCell> Run(ScanSnapSweepOptions options, Action<ScanSnapSweepCell>? progress = null,
        CancellationToken cancellation = default)
    {
        options.Validate();
        var cells = new List<ScanSnapSweepCell>();
        foreach (double lrZ in options.LearningRatesZ)
            foreach (double ratio in options.Ratios)
            {
                var entropy = Enumerable.Range(0, options.Seeds).Select(s =>
                {
                    cancellation.ThrowIfCancellationRequested();
                    var run = options.Run with { LearningRateZ = lrZ, LearningRateY = lrZ * ratio, Seed = options.Run.Seed + s };
                    return ScanSnap.Run(run).MeanEntropy;
                }).ToArray();
                var cell = new ScanSnapSweepCell(lrZ, ratio, entropy);
                cells.Add(cell);
                progress?.Invoke(cell);
            }
        return cells;
    }
}
