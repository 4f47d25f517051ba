using System.Globalization;
using System.Text.Json.Nodes;
using Tern.Runtime;

namespace Tern.Training;

/// <summary>The training and validation loss of a run, read from its <c>train-log.jsonl</c> and drawn as a PNG (ScottPlot).</summary>
public sealed class LossCurve
{
    readonly SortedDictionary<int, double> train = new(), valid = new();

    /// <summary>Steps with a training loss, in order.</summary>
    public IReadOnlyDictionary<int, double> Train => train;

    /// <summary>Steps with a validation loss, in order.</summary>
    public IReadOnlyDictionary<int, double> Validation => valid;

    /// <summary>Reads a run's <see cref="TrainingLog"/> (<c>step</c>, <c>loss</c>, optional <c>valid_loss</c>); should a step
    /// appear twice (a log written before resumed runs cut it back), the later row wins, as it is the one the run continued
    /// from.</summary>
    public static LossCurve FromLog(string path)
    {
        var curve = new LossCurve();
        foreach (var (line, step, row) in TrainingLog.Read(path))
        {
            curve.train[step] = row["loss"]?.GetValue<double>() ?? throw new InvalidDataException($"{path}:{line}: no \"loss\".");
            if (row["valid_loss"] is JsonNode v) curve.valid[step] = v.GetValue<double>();
            else curve.valid.Remove(step);
        }
        return curve;
    }

    /// <summary>Writes the curve as a PNG (atomically).</summary>
    public void SavePng(string path, string title, int width = 900, int height = 500)
    {
        var plot = new ScottPlot.Plot();
        if (train.Count > 0)
        {
            var line = plot.Add.ScatterLine(train.Keys.Select(k => (double)k).ToArray(), train.Values.ToArray());
            line.LegendText = "training";
        }
        if (valid.Count > 0)
        {
            var points = plot.Add.Scatter(valid.Keys.Select(k => (double)k).ToArray(), valid.Values.ToArray());
            points.LegendText = "validation";
            points.MarkerSize = 7;
        }
        plot.Title(title);
        plot.XLabel("optimizer step");
        plot.YLabel("loss (nats per token)");
        plot.ShowLegend();
        byte[] png = plot.GetImageBytes(width, height, ScottPlot.ImageFormat.Png);
        AtomicFile.Write(path, stream => stream.Write(png));
    }
}
