using System.CommandLine;
using System.Globalization;
using Tern.Distillation;

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
        var iterations = new Option<int>("--iterations") { Description = "Adam steps refining the poles after the ERA initialisation.", DefaultValueFactory = _ => d.Fit.Iterations };
        var command = new Command("hyena", "LaughingHyena: fit every long filter of a MultiHyena model with a modal SSM (Hankel spectrum → order, ERA + least-squares residues + Adam on the poles); writes a model folder that generates with O(1) work per token.")
        {
            model, output, order, orders, maxError, eachOrder, tolerance, iterations,
        };
        command.SetAction(r =>
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
            var layers = HyenaDistiller.DistillModel(folder, r.GetValue(output)!, options, line => Console.Error.WriteLine(line));
            Console.WriteLine(Table(layers));
            Console.WriteLine($"wrote {Path.GetFullPath(r.GetValue(output)!)}");
            return 0;
        });
        return command;
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
