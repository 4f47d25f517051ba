using System.CommandLine;
using System.Globalization;
using Tern.Distillation;
using Tern.Evaluation;
using Tern.Models;
using Tern.Runtime;
using Tern.Tokenization;

namespace Tern.Cli.Commands;

/// <summary><c>tern distill hyena</c>: LaughingHyena's distillation of a MultiHyena model's long filters into modal SSMs
/// (<see cref="HyenaDistiller.DistillModel"/>), with the error of every layer and filter in a table.</summary>
internal static class DistillCommand
{
    public static Command Create() => new("distill", "Distil a model into a cheaper one to run.") { Hyena() };

    static Command Hyena()
    {
        var d = new HyenaDistillOptions();
        var model = new Option<string>("--model", "-m") { Description = "The MultiHyena model folder to distil.", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "The distilled model folder to write (new or empty).", Required = true };
        var order = new Option<int?>("--order") { Description = "State order d of every filter (S = d/2 complex modes; even). Default: each layer's Hankel spectrum decides." };
        var orders = new Option<string?>("--orders") { Description = "An order sweep, e.g. 2,4,8,16: every order is fitted and each layer keeps the smallest within --max-error." };
        var maxError = new Option<double>("--max-error") { Description = "With --orders: the relative ℓ2 error every filter of a layer must reach.", DefaultValueFactory = _ => d.MaxError };
        var eachOrder = new Option<bool>("--each-order") { Description = "With --orders: also write one model folder per order (order-d inside --out), for quality against the order." };
        var tolerance = new Option<double>("--hankel-tolerance") { Description = "Without an order: the smallest d with σ_d/σ_0 below this, per filter (the layer takes the largest).", DefaultValueFactory = _ => d.HankelTolerance };
        var evalText = new Option<FileInfo?>("--eval-text") { Description = "Then the perplexity on this text (window 1024, stride 512, fp32) of the original model and of every model written: a table, and with --each-order perplexity-by-order.png in --out." };
        var evalTokens = new Option<int>("--eval-tokens") { Description = "With --eval-text: score only its first N tokens (0 = all).", DefaultValueFactory = _ => 0 };
        var device = new Option<string>("--device") { Description = "With --eval-text: cpu, cuda or auto, where the perplexities are computed.", DefaultValueFactory = _ => "auto" };
        var iterations = new Option<int>("--iterations") { Description = "Adam steps refining the poles after the ERA initialisation.", DefaultValueFactory = _ => d.Fit.Iterations };
        var command = new Command("hyena", "LaughingHyena: fit every long filter of a MultiHyena model with a modal SSM (Hankel spectrum → order, ERA + least-squares residues + Adam on the poles); writes a model folder that generates with O(1) work per token.")
        {
            model, output, order, orders, maxError, eachOrder, tolerance, iterations, evalText, evalTokens, device,
        };
        command.SetAction((r, cancellation) =>
        {
            if (r.GetValue(order) is not null && r.GetValue(orders) is not null) throw new UsageException("give --order or --orders, not both.");
            if (r.GetValue(eachOrder) && r.GetValue(orders) is null) throw new UsageException("--each-order writes the folders of an order sweep: give --orders too.");
            var options = d with { HankelTolerance = r.GetValue(tolerance), MaxError = r.GetValue(maxError), Fit = d.Fit with { Iterations = r.GetValue(iterations) } };
            if (r.GetValue(order) is { } single) options = options with { Modes = Modes(single, "--order") };
            if (r.GetValue(orders) is { } list)
            {
                int[] sweep;
                try
                {
                    sweep = list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(o => Modes(int.Parse(o, CultureInfo.InvariantCulture), "--orders")).ToArray();
                }
                catch (FormatException)
                {
                    throw new UsageException($"--orders must be even orders such as 2,4,8 (got '{list}').");
                }
                if (sweep.Length == 0 || sweep.Zip(sweep.Skip(1)).Any(p => p.Second <= p.First)) throw new UsageException($"--orders must ascend (got '{list}').");
                options = options with { SweepModes = sweep, WriteEachOrder = r.GetValue(eachOrder) };
            }
            string folder = r.GetValue(model)!;
            if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"--model: the folder '{folder}' does not exist.");
            string text = r.GetValue(evalText) is { } file ? TextFiles.Read(file.FullName, "--eval-text") : "";
            var evalDevice = ComputeOptions.ResolveDevice(ComputeOptions.ParseDevice(r.GetValue(device)!));
            string written = Path.GetFullPath(r.GetValue(output)!);
            var layers = HyenaDistiller.DistillModel(folder, written, options, line => Console.Error.WriteLine(line));
            Console.WriteLine(Table(layers));
            Console.WriteLine($"wrote {written}");
            if (r.GetValue(evalText) is { } scored)
            {
                var models = new List<(string Label, int Order, string Folder)> { ("original", 0, folder) };
                // The chosen model is one of the per-order folders when every layer kept the same order: scored once, there.
                if (!options.WriteEachOrder || layers.Any(l => l.Filters.Modes != layers[0].Filters.Modes))
                    models.Add(("distilled", 2 * layers.Max(l => l.Filters.Modes), written));
                if (options.WriteEachOrder) models.AddRange(options.SweepModes!.Select(m => ($"order {2 * m}", 2 * m, Path.Combine(written, $"order-{2 * m}"))));
                EvaluateOrders(models, text, scored.Name, r.GetValue(evalTokens), evalDevice.type == TorchSharp.DeviceType.CUDA ? DeviceKind.Cuda : DeviceKind.Cpu,
                    options.WriteEachOrder ? Path.Combine(written, "perplexity-by-order.png") : null, cancellation);
            }
            return Task.FromResult(0);
        });
        return command;
    }

    /// <summary>The perplexity of each model on the text (the original first), as a table; with <paramref name="png"/>, the
    /// perplexity against the order with the original's as a flat line.</summary>
    static void EvaluateOrders(IReadOnlyList<(string Label, int Order, string Folder)> models, string text, string name, int limit, DeviceKind device,
        string? png, CancellationToken cancellation)
    {
        IReadOnlyList<int> tokens = TernTokenizer.Load(models[0].Folder).Encode(text, addSpecialTokens: false);
        if (limit > 0 && tokens.Count > limit) tokens = tokens.Take(limit).ToArray();
        var results = new List<(string Label, int Order, double Perplexity)>();
        foreach (var (label, order, folder) in models)
        {
            using var model = CausalLanguageModel.Load(folder, new ModelLoadOptions { Device = device, DType = ModelDType.Float32 });
            var result = Perplexity.Evaluate(model, tokens, new PerplexityOptions { Window = Math.Min(1024, model.Info.MaxPositions) },
                new ConsoleProgress($"perplexity, {label}"), cancellation);
            Console.Error.WriteLine();
            results.Add((label, order, result.Perplexity));
        }
        double original = results[0].Perplexity;
        Console.WriteLine($"perplexity on {name} ({tokens.Count:N0} tokens, fp32):");
        Console.WriteLine("model          order  perplexity  vs original");
        foreach (var (label, order, ppl) in results)
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{label,-13}  {(order == 0 ? "-" : order.ToString(CultureInfo.InvariantCulture)),5}  {ppl,10:F3}  {(ppl / original - 1) * 100,+10:+0.00;-0.00}%"));
        if (png is null) return;
        var sweep = results.Where(x => x.Label.StartsWith("order ", StringComparison.Ordinal)).ToArray();
        double[] orders = sweep.Select(x => (double)x.Order).ToArray();
        LinePlot.Save(png, $"LaughingHyena: perplexity on {name} against the distillation order", "state order d (log scale)", "perplexity",
            new[] { new PlotSeries("distilled", orders, sweep.Select(x => x.Perplexity).ToArray()), new PlotSeries("original (long convolutions)", orders, orders.Select(_ => original).ToArray()) },
            logX: true);
        Console.WriteLine($"wrote {png}");
    }

    /// <summary>S for an even order d.</summary>
    static int Modes(int order, string flag) => order >= 2 && order % 2 == 0 ? order / 2
        : throw new UsageException($"{flag}: an order is an even number ≥ 2 (each complex mode is a conjugate pair), got {order}.");

    /// <summary>One row per layer and filter: the order its Hankel spectrum suggests, the order fitted and its relative error
    /// (with a sweep, the error at every order).</summary>
    internal static string Table(IReadOnlyList<DistilledLayer> layers)
    {
        var sweep = layers[0].Sweep?.Modes;
        var lines = new List<string>
        {
            "layer  filter  hankel d  order  rel. error" + (sweep is null ? "" : "   " + string.Join("", sweep.Select(s => $"{"d=" + 2 * s,10}"))),
        };
        foreach (var layer in layers)
            for (int c = 0; c < layer.RelativeError.Count; c++)
            {
                string row = string.Create(CultureInfo.InvariantCulture,
                    $"{layer.Layer,5}  {c,6}  {layer.HankelOrders?[c].ToString(CultureInfo.InvariantCulture) ?? "-",8}  {2 * layer.Filters.Modes,5}  {layer.RelativeError[c],10:E2}");
                if (layer.Sweep is { } s) row += "   " + string.Join("", s.RelativeError.Select(e => string.Create(CultureInfo.InvariantCulture, $"{e[c],10:E2}")));
                lines.Add(row);
            }
        return string.Join(Environment.NewLine, lines);
    }
}
