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
}
