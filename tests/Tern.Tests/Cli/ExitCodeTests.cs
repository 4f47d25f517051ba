using Tern.Cli;

namespace Tern.Tests.Cli;

/// <summary>One exit-code convention on every command (issue 18: an unknown flag exited 1 on generate, 2 on info and bench):
/// 2 for what was typed wrong, with a hint naming the command as typed; 1 for a failure while running.</summary>
public sealed class ExitCodeTests
{
    static (int Code, string[] Lines) Run(params string[] args) => CliProcess.Errors(args);

    [Theory]
    [InlineData("generate --bogus", "tern generate")]
    [InlineData("generate Hello --bogus", "tern generate")]
    [InlineData("info --bogus", "tern info")]
    [InlineData("bench --bogus", "tern bench")]
    [InlineData("chat --bogus", "tern chat")]
    [InlineData("eval ppl --text x.txt --bogus", "tern eval ppl")]
    [InlineData("eval budget --text x.txt --bogus", "tern eval budget")]
    [InlineData("offload plan --bogus", "tern offload plan")]
    [InlineData("--bogus", "tern")]
    public void AnUnknownFlagExitsTwoOnEveryCommand(string args, string command)
    {
        var (code, lines) = Run(args.Split(' '));
        Assert.Equal(2, code);
        Assert.Contains(lines, l => l.Contains("'--bogus'"));
        Assert.Equal($"Run '{command} --help' for the options.", lines[^1]);
    }

    [Theory]
    [InlineData("eval ppl", "tern: Option '--text' is required.", "tern eval ppl")]
    [InlineData("generate --max-new-tokens x", "tern: Cannot parse argument 'x' for option '--max-new-tokens' as expected type 'System.Int32'.", "tern generate")]
    [InlineData("bench --model no/such/folder --new-tokens 1", "tern: --new-tokens must be at least 2 (one prefill token plus decode steps).", "tern bench")]
    [InlineData("generate --model no/such/folder --top-p 0", "tern: --top-p must be in (0, 1] (got 0).", "tern generate")]
    public void BadOrMissingValuesExitTwoWithTheCommandsHelp(string args, string message, string command)
    {
        var (code, lines) = Run(args.Split(' '));
        Assert.Equal(2, code);
        Assert.Equal(new[] { message, $"Run '{command} --help' for the options." }, lines);
    }

    [Theory]
    [InlineData("generate --model no/such/folder -- --literal", "tern: --model: the folder 'no/such/folder' does not exist.")]
    [InlineData("generate --model no/such/folder -5", "tern: --model: the folder 'no/such/folder' does not exist.")]
    [InlineData("eval ppl --text no/such/file.txt", "tern: --text: '")]
    public void RuntimeFailuresExitOne(string args, string start)
    {
        var (code, lines) = Run(args.Split(' '));
        Assert.Equal(1, code);
        Assert.StartsWith(start, Assert.Single(lines));
    }

    [Fact]
    public void HelpAndUsageNameTheCommandTern()
    {
        var output = new StringWriter();
        var previous = Console.Out;
        Console.SetOut(output);
        try
        {
            Assert.Equal(0, Program.Run(new[] { "eval", "ppl", "--help" }, TextWriter.Null));
        }
        finally
        {
            Console.SetOut(previous);
        }
        Assert.Contains("tern eval ppl [options]", output.ToString());
        Assert.DoesNotContain("Tern.Cli", output.ToString());
    }
}
