using System.CommandLine;
using System.Globalization;
using Tern.Labs;

namespace Tern.Cli.Commands;

/// <summary><c>tern lab scan-snap|joma</c>: the training-dynamics papers' simulations, reproduced and plotted (CSV + PNG).</summary>
internal static class LabCommand
{
    public static Command Create() => new("lab", "Training-dynamics labs: Scan & Snap and JoMA simulations, reproduced and plotted.")
    {
        ScanSnapCommand(),
        JomaCommand(),
    };

    /// <summary><c>tern lab scan-snap</c>: one run (Fig. 4's recipe by default) or, with several learning rates or seeds, a
    /// sweep (Fig. 6).</summary>
    static Command ScanSnapCommand()
    {
        var d = new ScanSnapOptions();
        var numLast = new Option<int>("--num-last") { Description = "Query (\"last\") tokens.", DefaultValueFactory = _ => d.Data.NumLast };
        var nextPerLast = new Option<int>("--next-per-last") { Description = "Next tokens per query token (classes = num-last × this).", DefaultValueFactory = _ => d.Data.NextPerLast };
        var length = new Option<int>("--length") { Description = "Sequence length T (T−1 context tokens, then the query).", DefaultValueFactory = _ => d.Data.Length };
        var batch = new Option<int>("--batch-size") { Description = "Sequences per SGD step.", DefaultValueFactory = _ => d.BatchSize };
        var iterations = new Option<int>("--iterations") { Description = "SGD steps.", DefaultValueFactory = _ => d.Iterations };
        var lrZ = new Option<string>("--lr-z") { Description = "η_Z, the attention's learning rate; a comma-separated list sweeps.", DefaultValueFactory = _ => Text(d.LearningRateZ) };
        var ratio = new Option<string>("--lr-ratio") { Description = "η_Y/η_Z, the decoder's learning rate over the attention's; a list sweeps.", DefaultValueFactory = _ => Text(d.LearningRateY / d.LearningRateZ) };
        var momentum = new Option<double>("--momentum") { Description = "SGD momentum.", DefaultValueFactory = _ => d.Momentum };
        var init = new Option<string>("--init") { Description = "zero (Fig. 4) or default (PyTorch's Linear init, Fig. 6).", DefaultValueFactory = _ => "zero" };
        init.AcceptOnlyFromAmong("zero", "default");
        var seed = new Option<long>("--seed") { Description = "The official script's seed (Python's generator; torch's gets seed + 2).", DefaultValueFactory = _ => d.Seed };
        var seeds = new Option<int>("--seeds") { Description = "Seeds per setting: seed, seed + 1, …; more than one sweeps.", DefaultValueFactory = _ => 1 };
        string defaultOutput = ResultsFolder.For(Path.Combine("lab", "scan-snap"));
        var output = new Option<string>("--output", "-o") { Description = $"Folder for the CSV files and PNG plots (default {defaultOutput}).", DefaultValueFactory = _ => defaultOutput };
        var command = new Command("scan-snap", "Scan & Snap's one-layer (Y, Z) model on its synthetic sequence classes: loss, attention entropy per class and c_n weights; lists of learning rates or several seeds sweep them.")
        {
            numLast, nextPerLast, length, batch, iterations, lrZ, ratio, momentum, init, seed, seeds, output,
        };
        command.SetAction((r, cancellation) =>
        {
            double[] rates = Numbers(r.GetValue(lrZ)!, "--lr-z"), ratios = Numbers(r.GetValue(ratio)!, "--lr-ratio");
            AtLeast(r, numLast, 1); AtLeast(r, nextPerLast, 1); AtLeast(r, length, 2); AtLeast(r, batch, 1); AtLeast(r, iterations, 1);
            int seedCount = AtLeast(r, seeds, 1);
            if (r.GetValue(momentum) is < 0 or >= 1) throw new UsageException($"--momentum must be in [0, 1) (got {Text(r.GetValue(momentum))}).");
            if (r.GetValue(seed) < 0) throw new UsageException($"--seed must not be negative (got {r.GetValue(seed)}): Python's generator hashes negative seeds differently.");
            var options = new ScanSnapOptions
            {
                Data = d.Data with { NumLast = r.GetValue(numLast), NextPerLast = r.GetValue(nextPerLast), Length = r.GetValue(length) },
                BatchSize = r.GetValue(batch), Iterations = r.GetValue(iterations), Momentum = r.GetValue(momentum),
                ZeroInit = r.GetValue(init) == "zero", Seed = r.GetValue(seed),
                LearningRateZ = rates[0], LearningRateY = rates[0] * ratios[0],
            };
            string dir = r.GetValue(output)!;
            IReadOnlyList<string> files;
            if (rates.Length == 1 && ratios.Length == 1 && seedCount == 1)
            {
                var run = ScanSnap.Run(options, (t, loss) =>
                {
                    cancellation.ThrowIfCancellationRequested();
                    if (t % 2 == 0) Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{t}] loss: {loss:G6}"));
                });
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"attention entropy H(c_n), mean over {run.Data.Facts.Count} classes: {run.MeanEntropy[0]:F4} at the start, {run.MeanEntropy[^1]:F4} after {options.Iterations} iterations"));
                files = ScanSnapReport.SaveRun(run, dir);
            }
            else
            {
                var sweep = new ScanSnapSweepOptions { Run = options, LearningRatesZ = rates, Ratios = ratios, Seeds = seedCount };
                Console.WriteLine($"{"η_Z",6} {"η_Y/η_Z",8} {"final H(c_n)",13} {"± std",7}");
                var cells = ScanSnapSweep.Run(sweep, c => Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{c.LearningRateZ,6:G4} {c.Ratio,8:G4} {c.Final,13:F4} {c.FinalStd,7:F4}")), cancellation);
                files = ScanSnapReport.SaveSweep(cells, sweep, dir);
            }
            Console.WriteLine($"wrote {string.Join(", ", files.Select(Path.GetFileName))} in {Path.GetFullPath(dir)}");
            return Task.FromResult(0);
        });
        return command;
    }

    /// <summary><c>tern lab joma</c>: the linear and nonlinear cases with their invariant and the nonlinear toy; <c>tern lab joma plot CSV</c>
    /// draws a training probe's CSV (<c>tern train --probe-dynamics</c>).</summary>
    static Command JomaCommand()
    {
        var linear = new JomaLinearOptions();
        var nonlinear = new JomaNonlinearOptions();
        var steps = new Option<int>("--steps") { Description = "SGD steps of the linear and nonlinear cases.", DefaultValueFactory = _ => linear.Steps };
        var toySteps = new Option<int>("--toy-steps") { Description = "Steps of the nonlinear toy.", DefaultValueFactory = _ => nonlinear.Steps };
        var uniform = new Option<bool>("--uniform-distinct") { Description = "Linear and nonlinear cases: distinct tokens' probabilities U(0, 0.5) instead of Gaussian bumps moving with the class." };
        var seed = new Option<long>("--seed") { Description = "Seed of the linear and nonlinear cases' data and initial weights.", DefaultValueFactory = _ => linear.Seed };
        string defaultOutput = ResultsFolder.For(Path.Combine("lab", "joma"));
        var output = new Option<string>("--output", "-o") { Description = $"Folder for the CSV files and PNG plots (default {defaultOutput}).", DefaultValueFactory = _ => defaultOutput };
        var command = new Command("joma", "JoMA's toy dynamics: the linear and nonlinear (ReLU MLP) cases (attention logits follow the MLP weights through the invariant) and the nonlinear toy (attention sparsifies, then becomes denser).")
        {
            steps, toySteps, uniform, seed, output, JomaPlotCommand(),
        };
        command.SetAction(r =>
        {
            var lo = linear with { Steps = AtLeast(r, steps, 1), GaussianDistinct = !r.GetValue(uniform), Seed = r.GetValue(seed) };
            var no = nonlinear with { Steps = AtLeast(r, toySteps, 1) };
            string dir = r.GetValue(output)!;
            var lr = Joma.RunLinear(lo);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"linear: NC(z, ẑ) ≥ {lr.Invariant.Min():F4} over {lo.Steps} steps; attention entropy {ScanSnap.Entropy(lr.Attention[0]):F3} → {ScanSnap.Entropy(lr.Attention[^1]):F3}"));
            var nc = Joma.RunNonlinearCase(new JomaNonlinearCaseOptions { Recipe = lo });
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"nonlinear case ({nc.Options.Activation} MLP, z trained): NC(z, ẑ) ≥ {nc.Invariant.Min():F4}, NC(z − z(0), ẑ − ẑ(0)) ≥ {nc.MinChange:F4} (Σ v_j² term alone ≥ {nc.MinSquaredChange:F4}) over {lo.Steps} steps; attention entropy {ScanSnap.Entropy(nc.Attention[0]):F3} → {ScanSnap.Entropy(nc.Attention[^1]):F3}"));
            var nr = Joma.RunNonlinear(no);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"nonlinear toy: entropy {nr.Entropy[0]:F3} → {nr.Entropy.Min():F3} at step {nr.SparsestStep} → {nr.Entropy[^1]:F3} at step {no.Steps - 1}"));
            var files = JomaReport.SaveLinear(lr, dir).Concat(JomaReport.SaveNonlinearCase(nc, dir)).Concat(JomaReport.SaveNonlinear(nr, dir));
            Console.WriteLine($"wrote {string.Join(", ", files.Select(Path.GetFileName))} in {Path.GetFullPath(dir)}");
            return 0;
        });
        return command;
    }

    static Command JomaPlotCommand()
    {
        var csv = new Argument<string>("csv") { Description = $"A training probe's {TrainingDynamicsProbe.CsvName} (tern train --probe-dynamics)." };
        var title = new Option<string>("--title") { Description = "Plot title prefix.", DefaultValueFactory = _ => "training run" };
        var command = new Command("plot", "Draw a training probe's CSV: attention entropy and MLP stable ranks per layer over steps (PNGs next to it).") { csv, title };
        command.SetAction(r =>
        {
            string path = r.GetValue(csv)!;
            if (!File.Exists(path)) throw new FileNotFoundException($"'{Path.GetFullPath(path)}' does not exist.", path);
            foreach (string png in TrainingDynamicsProbe.Plot(path, r.GetValue(title)!)) Console.WriteLine(png);
            return 0;
        });
        return command;
    }

    static string Text(double v) => v.ToString("G", CultureInfo.InvariantCulture);

    static double[] Numbers(string text, string flag)
    {
        try
        {
            var values = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToArray();
            if (values.Length == 0 || values.Any(v => !(v > 0))) throw new FormatException();
            return values;
        }
        catch (FormatException)
        {
            throw new UsageException($"{flag} must be positive numbers, comma-separated (got '{text}').");
        }
    }

    static int AtLeast(ParseResult r, Option<int> option, int min)
    {
        int value = r.GetValue(option);
        return value >= min ? value : throw new UsageException($"{option.Name} must be at least {min} (got {value}).");
    }
}
