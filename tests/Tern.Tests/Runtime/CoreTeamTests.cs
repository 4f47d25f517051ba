using Tern.Interop;

namespace Tern.Tests.Runtime;

/// <summary>The CPU kernels' team of threads: every part runs once a run, on as many threads as the team has; a split covers its
/// range once in aligned chunks, a few a thread; a part's exception reaches the caller and the team keeps working.</summary>
public class CoreTeamTests
{
    [Fact]
    public void EveryPartRunsOnceARun()
    {
        var team = CoreTeam.Shared;
        var counts = new int[team.Size];
        for (int run = 0; run < 2000; run++) team.Run(p => Interlocked.Increment(ref counts[p]));
        Assert.All(counts, c => Assert.Equal(2000, c));
    }

    [Theory]
    [InlineData(2072, 16)]
    [InlineData(5, 1)]
    [InlineData(1, 8)]
    public void SplitCoversTheRangeOnceInAlignedChunks(long count, long align)
    {
        var covered = new int[count];
        var bounds = new System.Collections.Concurrent.ConcurrentBag<(long From, long To)>();
        CoreTeam.Shared.Split(count, align, (from, to) =>
        {
            bounds.Add((from, to));
            for (long i = from; i < to; i++) Interlocked.Increment(ref covered[i]);
        });
        Assert.All(covered, c => Assert.Equal(1, c));
        Assert.All(bounds, b => Assert.True(b.To > b.From && b.From % align == 0, $"[{b.From}, {b.To})"));
        Assert.True(bounds.Count <= CoreTeam.Shared.Size * CoreTeam.ChunksPerThread);
    }

    [Fact]
    public void APartsExceptionReachesTheCallerAndTheTeamGoesOn()
    {
        var team = CoreTeam.Shared;
        int failing = team.Size - 1; // a worker's part where there is one, else the caller's
        var e = Record.Exception(() => team.Run(p => { if (p == failing) throw new InvalidOperationException("part failed"); }));
        Assert.NotNull(e);
        Assert.Contains("part failed", e is AggregateException a ? a.InnerException!.Message : e.Message);
        int ran = 0;
        team.Run(_ => Interlocked.Increment(ref ran));
        Assert.Equal(team.Size, ran);
    }
}
