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

    /// <summary>
    /// Reads a log of one JSON object per line (<c>step</c>, <c>loss</c>, optional <c>valid_loss</c>). A resumed run logs again
    /// the steps it redoes after its last checkpoint; the later line of a step wins, as it is the one the run continued from.
    /// </summary>
    public static LossCurve FromLog(string path)
    {
        var curve = new LossCurve();
        int number = 0;
        foreach (string line in File.ReadLines(path))
        {
            number++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonNode? node;
            try { node = JsonNode.Parse(line); }
            catch (System.Text.Json.JsonException e) { throw new InvalidDataException($"{path}:{number}: not a JSON object ({e.Message}).", e); }
            int step = node?["step"]?.GetValue<int>() ?? throw new InvalidDataException($"{path}:{number}: no \"step\".");
            curve.train[step] = node["loss"]?.GetValue<double>() ?? throw new InvalidDataException($"{path}:{number}: no \"loss\".");
            if (node["valid_loss"] is JsonNode v) curve.valid[step] = v.GetValue<double>();
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
