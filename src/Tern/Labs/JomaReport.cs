using System.Globalization;
using System.Text;
using Tern.Evaluation;

namespace Tern.Labs;

/// <summary>CSV files and PNG plots of JoMA's toy dynamics.</summary>
public static class JomaReport
{
    /// <summary>Writes <c>linear.csv</c> (step, NC of the invariant and of its two parts, loss, attention entropy, v_0),
    /// <c>linear-invariant.png</c> (the paper's Fig. 2 right) and <c>linear-components.png</c> (the first four components of
    /// v_0 over time, Fig. 3 right). Returns the files.</summary>
    public static IReadOnlyList<string> SaveLinear(JomaLinearRun run, string directory)
    {
        Directory.CreateDirectory(directory);
        int mc = run.Attention[0].Length;
        var csv = new StringBuilder("step,nc_invariant,nc_squared_part,nc_norm_part,loss,attention_entropy")
            .Append(string.Concat(Enumerable.Range(0, mc).Select(l => $",v0_{l}"))).Append('\n');
        for (int t = 0; t < run.Invariant.Length; t++)
            csv.Append(CultureInfo.InvariantCulture, $"{t},{run.Invariant[t]:R},{run.SquaredPart[t]:R},{run.NormPart[t]:R},{run.Loss[t]:R},{ScanSnap.Entropy(run.Attention[t]):R}")
               .Append(string.Concat(run.FirstClassWeights[t].Select(v => "," + v.ToString("R", CultureInfo.InvariantCulture)))).Append('\n');
        var files = new List<string> { LabFiles.Write(directory, "linear.csv", csv.ToString()) };
        double[] steps = Enumerable.Range(0, run.Invariant.Length).Select(t => (double)t).ToArray();
        string invariantPng = Path.Combine(directory, "linear-invariant.png");
        LinePlot.Save(invariantPng, "JoMA linear case: attention logits z(t) against the invariant's prediction ẑ(t)", "step",
            "normalised correlation with z(t)",
            [new("NC(ẑ, z): the invariant", steps, run.Invariant), new("its Σ v_j² part alone", steps, run.SquaredPart),
             new("its −x̄ Σ‖w_j‖² part alone", steps, run.NormPart)]);
        files.Add(invariantPng);
        string componentsPng = Path.Combine(directory, "linear-components.png");
        LinePlot.Save(componentsPng, "JoMA linear case: growth of v_0 = U_Cᵀ w_0 (class 0's weight on each contextual token)", "step", "v_0 component",
            Enumerable.Range(0, Math.Min(4, mc)).Select(l => new PlotSeries($"component {l}", steps, run.FirstClassWeights.Select(v => v[l]).ToArray())));
        files.Add(componentsPng);
        return files;
    }

    /// <summary>Writes <c>nonlinear-invariant.csv</c> (step, NC(z, ẑ), NC of the changes z − z(0) against ẑ − ẑ(0) and against
    /// its Σ v_j² term alone, loss, attention entropy) and <c>nonlinear-invariant.png</c> (the three from step 1 on). Returns the files.</summary>
    public static IReadOnlyList<string> SaveNonlinearCase(JomaNonlinearCaseRun run, string directory)
    {
        Directory.CreateDirectory(directory);
        var csv = new StringBuilder("step,nc_invariant,nc_change,nc_squared_change,loss,attention_entropy\n");
        for (int t = 0; t < run.Invariant.Length; t++)
            csv.Append(CultureInfo.InvariantCulture,
                $"{t},{run.Invariant[t]:R},{run.Change[t]:R},{run.SquaredChange[t]:R},{run.Loss[t]:R},{ScanSnap.Entropy(run.Attention[t]):R}\n");
        var files = new List<string> { LabFiles.Write(directory, "nonlinear-invariant.csv", csv.ToString()) };
        double[] steps = Enumerable.Range(1, run.Invariant.Length - 1).Select(t => (double)t).ToArray();
        string png = Path.Combine(directory, "nonlinear-invariant.png");
        LinePlot.Save(png, $"JoMA nonlinear case ({run.Options.Activation} MLP): attention logits z(t) against the invariant's ẑ(t)", "step",
            "normalised correlation",
            [new("NC(ẑ, z)", steps, run.Invariant[1..]), new("NC(ẑ − ẑ(0), z − z(0))", steps, run.Change[1..]),
             new("NC of the changes, Σ v_j² term alone", steps, run.SquaredChange[1..])]);
        files.Add(png);
        return files;
    }

    /// <summary>Writes <c>nonlinear.csv</c> (step, entropy, v), <c>nonlinear-entropy.png</c> (Fig. 4 right: sparse, then denser)
    /// and <c>nonlinear-v.png</c> (each component of v over time, dashed targets in the legend's order). Returns the files.</summary>
    public static IReadOnlyList<string> SaveNonlinear(JomaNonlinearRun run, string directory)
    {
        Directory.CreateDirectory(directory);
        int n = run.Target.Length;
        var csv = new StringBuilder("step,entropy").Append(string.Concat(Enumerable.Range(0, n).Select(i => $",v_{i}"))).Append('\n');
        for (int t = 0; t < run.Entropy.Length; t++)
            csv.Append(CultureInfo.InvariantCulture, $"{t},{run.Entropy[t]:R}")
               .Append(string.Concat(run.V[t].Select(v => "," + v.ToString("R", CultureInfo.InvariantCulture)))).Append('\n');
        var files = new List<string> { LabFiles.Write(directory, "nonlinear.csv", csv.ToString()) };
        double[] steps = Enumerable.Range(0, run.Entropy.Length).Select(t => (double)t).ToArray();
        string entropyPng = Path.Combine(directory, "nonlinear-entropy.png");
        LinePlot.Save(entropyPng, string.Create(CultureInfo.InvariantCulture,
            $"JoMA nonlinear toy: attention entropy (min {run.Entropy.Min():F3} at step {run.SparsestStep}, last {run.Entropy[^1]:F3})"),
            "step", "entropy of softmax(v²/T) (nats)", [new("entropy", steps, run.Entropy)]);
        files.Add(entropyPng);
        string vPng = Path.Combine(directory, "nonlinear-v.png");
        LinePlot.Save(vPng, "JoMA nonlinear toy: components of v approach their targets μ, largest first", "step", "v component",
            Enumerable.Range(0, n).Select(i => new PlotSeries(string.Create(CultureInfo.InvariantCulture, $"v_{i} (μ = {run.Target[i]:F3})"),
                steps, run.V.Select(v => v[i]).ToArray())));
        files.Add(vPng);
        return files;
    }
}
