using Tern.Labs;

namespace Tern.Tests.Labs;

public sealed class PythonRandomTests
{
    /// <summary>CPython's <c>random.seed(n); random.random()</c> (53 bits from two words: a·2²⁶ + b over 2⁵³).</summary>
    [Theory]
    [InlineData(0, 0.8444218515250481)]
    [InlineData(42, 0.6394267984578837)]
    public void SeedsAsCPythonDoes(long seed, double first)
    {
        var random = new PythonRandom(seed);
        double a = random.NextUInt32() >> 5, b = random.NextUInt32() >> 6;
        Assert.Equal(first, (a * 67108864.0 + b) / 9007199254740992.0);
    }

    [Fact]
    public void BelowStaysInRangeAndCoversIt()
    {
        var random = new PythonRandom(2);
        var seen = Enumerable.Range(0, 2000).Select(_ => random.Below(3)).ToArray();
        Assert.Equal(new[] { 0, 1, 2 }, seen.Distinct().Order());
        Assert.Equal(0, new PythonRandom(7).Below(1));
    }
}
