using Tern.Labs;

namespace Tern.Tests.Labs;

public sealed class ScanSnapTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>The official Fig. 4 run's log (luckmatters <c>ssl/real-dataset/scan_snap/figure_4.log</c>, seed 2): the loss at
    /// every second iteration, as printed (fp32 on a GPU).</summary>
    static readonly (int Iteration, double Loss)[] OfficialLog =
    [
        (0, 3.526359796524048), (2, 2.3679099082946777), (4, 0.733475387096405), (6, 0.16080491244792938),
        (8, 0.04442878067493439), (10, 0.012952473945915699), (12, 0.004386259242892265), (14, 0.0018097831634804606),
        (16, 0.0006407027249224484), (18, 0.0004101922386325896), (20, 0.00020543375285342336), (22, 0.0001480427454225719),
        (24, 0.0001294454123126343), (26, 8.063780114753172e-05), (28, 6.175993621582165e-05), (30, 5.301201599650085e-05),
        (32, 5.059645991423167e-05), (34, 3.5792043490801007e-05), (36, 3.449523865128867e-05), (38, 3.0941479053581133e-05),
        (40, 2.911147748818621e-05), (42, 2.9778911994071677e-05), (44, 3.086395372520201e-05), (46, 2.48462674790062e-05),
        (48, 2.5099543563555926e-05), (50, 2.5783052478800528e-05), (52, 2.6792611606651917e-05), (54, 2.2869091480970383e-05),
        (56, 2.1117355572641827e-05), (58, 2.5497896785964258e-05), (60, 2.4302386009367183e-05), (62, 2.2612024622503668e-05),
        (64, 2.6725640054792166e-05), (66, 2.238919296360109e-05), (68, 2.2064519725972787e-05), (70, 1.994945887417998e-05),
        (72, 2.241275433334522e-05), (74, 2.1630286937579513e-05), (76, 1.95900665858062e-05), (78, 2.687439337023534e-05),
        (80, 2.182226671720855e-05), (82, 2.19909634324722e-05), (84, 2.0960904294042848e-05), (86, 2.1617408492602408e-05),
        (88, 1.9687886378960684e-05), (90, 2.2005695427651517e-05), (92, 2.6310464818379842e-05), (94, 2.365312866459135e-05),
        (96, 2.237727676401846e-05), (98, 2.2223721316549927e-05),
    ];

    /// <summary>Same seed, same recipe, same draws (Python's generator picks the classes, libtorch's multinomial the tokens,
    /// after two default Linear inits): the log's losses to 3 significant digits up to iteration 20, and within 0.2% to the
    /// end, where the loss is ~2e-5 and the official fp32 arithmetic limits the agreement.</summary>
    [Fact]
    public void TheFigure4RunReproducesTheOfficialLog()
    {
        var run = ScanSnap.Run(new ScanSnapOptions());
        foreach (var (t, official) in OfficialLog)
            Assert.True(Math.Abs(run.Loss[t] - official) <= (t <= 20 ? 0.5e-3 : 2e-3) * official,
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
        var cells = ScanSnapSweep.Run(options, cancellation: Ct).ToDictionary(c => (c.LearningRateZ, c.Ratio));
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
