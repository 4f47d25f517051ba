using Tern.Cli.Commands;

namespace Tern.Tests.Cli;

/// <summary>Outputs default outside the checkout (issue 18: <c>tern bench</c> appended to the tracked bench/results.csv, the
/// evaluations wrote into bench/eval) and the commands print where they wrote.</summary>
public sealed class OutputPathTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => CliProcess.Run(args);

    [Theory]
    [InlineData("bench", "bench/results.csv")]
    [InlineData("bench serve", "serving")]
    [InlineData("eval stream", "eval")]
    [InlineData("eval budget", "eval")]
    [InlineData("eval choice", "eval")]
    [InlineData("offload calibrate", "hardware-profile.json")]
    public void DefaultsAreAPerUserFolder(string command, string name)
    {
        var (code, help, _) = Run(command.Split(' ').Append("--help").ToArray());
        Assert.Equal(0, code);
        string folder = ResultsFolder.For(name);
        Assert.StartsWith(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), folder);
        Assert.Contains($"(default {folder})", help.ReplaceLineEndings(" ").Replace("  ", " "));
    }

    [Fact]
    public void BenchSaysWhereItAppended()
    {
        string file = Path.Combine(Path.GetTempPath(), $"tern-bench-{Guid.NewGuid():N}", "rows.csv");
        try
        {
            var (code, output, err) = Run("bench", "--model", Fixtures.ModelDir("llama-gqa"), "--device", "cpu", "--prompt", "8", "--new-tokens", "2", "-o", file);
            Assert.True(code == 0, err);
            Assert.Contains($"appended 1 row(s) to {file}", output);
            Assert.Contains("loading", err); // the load's progress, on stderr only
            Assert.Contains("100.0%", err);
            Assert.DoesNotContain("loading", output);
            Assert.Equal(2, File.ReadAllLines(file).Length);
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(file)!, recursive: true);
        }
    }
}
