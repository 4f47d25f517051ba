using Tern.Labs;

namespace Tern.Tests.Labs;

public sealed class ScanSnapTests
{
    /// <summary>The official Fig. 4 run's log (luckmatters <c>ssl/real-dataset/scan_snap/figure_4.log</c>, seed 2): the loss at
    /// every second iteration up to 20, as printed (fp32 on a GPU).</summary>
    static readonly (int Iteration, double Loss)[] OfficialLog =
    [
        (0, 3.526359796524048), (2, 2.3679099082946777), (4, 0.733475387096405), (6, 0.16080491244792938),
        (8, 0.04442878067493439), (10, 0.012952473945915699), (12, 0.004386259242892265), (14, 0.0018097831634804606),
        (16, 0.0006407027249224484), (18, 0.0004101922386325896), (20, 0.00020543375285342336),
    ];

    /// <summary>Same seed, same recipe, same draws (Python's generator picks the classes, libtorch's multinomial the tokens,
    /// after two default Linear inits): the log's losses to 3 significant digits.</summary>
    [Fact]
    public void TheFigure4RunReproducesTheOfficialLog()
    {
        var run = ScanSnap.Run(new ScanSnapOptions { Iterations = 21 });
        foreach (var (t, official) in OfficialLog)
            Assert.True(Math.Abs(run.Loss[t] - official) <= 0.5e-3 * official,
                $"iteration {t}: loss {run.Loss[t]:G6}, official {official:G6}");
    }

    /// <summary>The paper's Fig. 6 prediction on a small sweep (#last 1, two next tokens, default init, two seeds): a larger
    /// η_Y/η_Z makes the decoder fit first, so attention snaps earlier, at a higher entropy; a larger η_Z scans further, to a
    /// lower entropy.</summary>
    [Fact]
    public void TheLearningRatesMoveTheSnapInThePredictedDirection()
    {
        var options = new ScanSnapSweepOptions
        {
            Run = new ScanSnapOptions { ZeroInit = false, Seed = 1, Data = new SequenceClassOptions { NumLast = 1, NextPerLast = 2 } },
            LearningRatesZ = [0.5, 1], Ratios = [1, 10], Seeds = 2,
        };
        var cells = ScanSnapSweep.Run(options).ToDictionary(c => (c.LearningRateZ, c.Ratio));
        foreach (double lrZ in options.LearningRatesZ)
            Assert.True(cells[(lrZ, 10)].Final > cells[(lrZ, 1)].Final + 0.05,
                $"η_Z {lrZ}: final entropy {cells[(lrZ, 1)].Final:F3} at η_Y/η_Z 1, {cells[(lrZ, 10)].Final:F3} at 10");
        Assert.True(cells[(1, 1)].Final < cells[(0.5, 1)].Final - 0.05,
            $"η_Y/η_Z 1: final entropy {cells[(0.5, 1)].Final:F3} at η_Z 0.5, {cells[(1, 1)].Final:F3} at 1");
        // Every run starts from near-uniform attention (the entropy of P(·|m,n), 2.899) and ends below it: it scanned.
        Assert.All(cells.Values, c => Assert.InRange(c.MeanEntropy[0], 2.85, 2.9));
        Assert.All(cells.Values, c => Assert.True(c.Final < c.MeanEntropy[0]));
    }
}
