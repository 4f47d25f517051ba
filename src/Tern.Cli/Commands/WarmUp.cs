using System.Diagnostics;
using System.Runtime;

namespace Tern.Cli.Commands;

/// <summary>
/// Warm-up before a timed run, to the steady state a long generation or a server runs in: rounds repeat until at least
/// <see cref="Least"/> has passed and a whole round compiled no method. .NET compiles hot methods again in the background
/// (tiered compilation: after a 100 ms call-counting delay, with an instrumented tier between), and on two cores that thread
/// took a core from the decode step: the default model's 128-token decode on the CPU ran 3.2–6.1 ms a step in a process's first
/// runs, 2.8–3.2 with tiered compilation off (bench/README.md). A few warm-up steps ended long before that.
/// </summary>
internal static class WarmUp
{
    /// <summary>The shortest warm-up: past the call-counting delay and the background compilations it triggers.</summary>
    public static readonly TimeSpan Least = TimeSpan.FromSeconds(1);

    /// <summary>The longest: a process that keeps compiling (or a round slower than this) is timed as it is.</summary>
    public static readonly TimeSpan Most = TimeSpan.FromSeconds(15);

    /// <summary>Runs <paramref name="round"/> until the code is steady (see the class); returns the rounds run.</summary>
    public static int UntilSteady(Action round)
    {
        var watch = Stopwatch.StartNew();
        for (int rounds = 1; ; rounds++)
        {
            long compiled = JitInfo.GetCompiledMethodCount();
            round();
            bool quiet = JitInfo.GetCompiledMethodCount() == compiled;
            if (quiet && watch.Elapsed >= Least || watch.Elapsed >= Most) return rounds;
        }
    }
}
