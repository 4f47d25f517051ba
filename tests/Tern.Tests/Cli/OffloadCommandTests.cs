using Tern.Cli;
using Tern.Offloading;

namespace Tern.Tests.Cli;

/// <summary><c>tern offload plan</c> and the <c>--offload</c> flags: a plan from config.json alone, bad values stopped at parse.</summary>
public sealed class OffloadCommandTests
{
    static (int Code, string Output, string[] Errors) Run(params string[] args)
    {
        var error = new StringWriter();
        var output = new StringWriter();
        var previous = Console.Out;
        Console.SetOut(output);
        try
        {
            int code = Program.Run(args, error);
            return (code, output.ToString(), error.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
        }
        finally
        {
            Console.SetOut(previous);
        }
    }

    [Fact]
    public void PlanPrintsAPolicyThatParsesAndItsPrediction()
    {
        var (code, output, _) = Run("offload", "plan", "--model", Path.Combine(Fixtures.Root, "configs", "opt-30b"),
            "--gpu-mem", "16GB", "--cpu-mem", "100GB", "--prompt", "512", "--gen", "32");
        Assert.Equal(0, code);
        string line = output.Split('\n').Single(l => l.StartsWith("policy:", StringComparison.Ordinal));
        var policy = OffloadPolicy.Parse(line["policy:".Length..].Trim());
        Assert.True(policy.Weights.Cpu > 0.5, line);
        Assert.Contains("tokens/s", output);
    }

    [Theory]
    [InlineData("bench", "--offload", "w=50/40/0", "sum to 100%")]
    [InlineData("generate", "--offload", "gbs=0", "at least 1")]
    [InlineData("bench", "--gpu-mem", "sixteen", "--gpu-mem 'sixteen' is not a size")]
    public void BadOffloadFlagsStopTheParse(string command, string flag, string value, string expected)
    {
        var args = new List<string> { command, "--model", "no/such/folder", flag, value };
        if (flag != "--offload") args.AddRange(new[] { "--offload", "auto" });
        var (code, _, errors) = Run(args.ToArray());
        Assert.Equal(2, code);
        Assert.Contains(expected, errors[0]);
    }

    [Theory]
    [InlineData("16GB", 16L << 30)]
    [InlineData("16GiB", 16L << 30)]
    [InlineData("512MB", 512L << 20)]
    [InlineData("1.5T", 3L << 39)]
    [InlineData("1000", 1000)]
    public void SizesParse(string text, long bytes) => Assert.Equal(bytes, Units.ParseBytes(text, "--gpu-mem"));
}
