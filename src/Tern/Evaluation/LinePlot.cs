using Tern.Runtime;

namespace Tern.Evaluation;

/// <summary>One line of a <see cref="LinePlot"/>.</summary>
public sealed record PlotSeries(string Label, double[] X, double[] Y);

/// <summary>Evaluation curves as PNG files (ScottPlot), written atomically.</summary>
public static class LinePlot
{
    /// <summary>Draws the series with markers and a legend; NaN points are left out. <paramref name="logY"/> draws y on a
    /// log scale, ticked at powers of ten (values spanning orders of magnitude, such as perplexities). With
    /// <paramref name="xCategories"/> the x values are indexes 0, 1, … of those labels (one tick each).</summary>
    public static void Save(string path, string title, string xLabel, string yLabel, IEnumerable<PlotSeries> series,
        bool logX = false, int width = 1000, int height = 560, bool logY = false, IReadOnlyList<string>? xCategories = null)
    {
        var plot = new ScottPlot.Plot();
        foreach (var s in series)
        {
            var points = s.X.Zip(s.Y).Where(p => double.IsFinite(p.First) && double.IsFinite(p.Second) && (!logY || p.Second > 0)).ToArray();
            if (points.Length == 0) continue;
            var line = plot.Add.ScatterLine(points.Select(p => logX ? Math.Log10(p.First) : p.First).ToArray(),
                points.Select(p => logY ? Math.Log10(p.Second) : p.Second).ToArray());
            line.LegendText = s.Label;
            line.MarkerSize = points.Length <= 40 ? 6 : 0;
        }
        if (logX)
        {
            // Ticks at the data's own x values, labelled in linear units.
            var ticks = series.SelectMany(s => s.X).Where(x => x > 0).Distinct().Order().ToArray();
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
                ticks.Select(Math.Log10).ToArray(), ticks.Select(t => t.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)).ToArray());
        }
        if (xCategories is not null)
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
                Enumerable.Range(0, xCategories.Count).Select(i => (double)i).ToArray(), xCategories.ToArray());
        if (logY)
        {
            var ys = series.SelectMany(s => s.Y).Where(y => y > 0 && double.IsFinite(y)).ToArray();
            if (ys.Length > 0)
            {
                int low = (int)Math.Floor(Math.Log10(ys.Min())), high = (int)Math.Ceiling(Math.Log10(ys.Max()));
                // 1, 2 and 5 of each decade while few decades are shown; powers of ten alone past that.
                double[] steps = high - low <= 3 ? [1, 2, 5] : [1];
                var ticks = Enumerable.Range(low, high - low + 1).SelectMany(d => steps.Select(m => m * Math.Pow(10, d)))
                    .Where(t => t >= Math.Pow(10, low) && t <= Math.Pow(10, high)).ToArray();
                plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
                    ticks.Select(Math.Log10).ToArray(), ticks.Select(t => t.ToString("#,0.###", System.Globalization.CultureInfo.InvariantCulture)).ToArray());
            }
        }
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        plot.ShowLegend(ScottPlot.Edge.Right); // outside the data area: it never hides points
        byte[] png = plot.GetImageBytes(width, height, ScottPlot.ImageFormat.Png);
        AtomicFile.Write(path, stream => stream.Write(png));
    }
}
