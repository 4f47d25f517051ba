namespace Tern.Cli.Commands;

/// <summary>A progress line on stderr, rewritten in place: synchronous (unlike <see cref="Progress{T}"/>, which posts reports
/// to the thread pool and can print them out of order), monotonic, and redrawn only when the shown percentage changes.
/// With <paramref name="after"/>, nothing shows until that much time has passed (work that ends sooner stays silent).</summary>
internal sealed class ConsoleProgress(string label, TimeSpan after = default) : IProgress<double>
{
    readonly System.Diagnostics.Stopwatch clock = System.Diagnostics.Stopwatch.StartNew();
    readonly object gate = new();
    int shown = -1;

    /// <summary>Ends the line, if one was shown.</summary>
    public void End()
    {
        lock (gate) if (shown >= 0) Console.Error.WriteLine();
    }

    public void Report(double fraction)
    {
        int permille = (int)(Math.Clamp(fraction, 0, 1) * 1000);
        lock (gate)
        {
            if (permille <= shown || clock.Elapsed < after) return;
            shown = permille;
            Console.Error.Write($"\r{label} {permille / 10.0,5:F1}%  ({clock.Elapsed.TotalSeconds:F0} s)   ");
        }
    }
}

/// <summary>Progress reported synchronously on the reporting thread (in order, unlike <see cref="Progress{T}"/>).</summary>
internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
