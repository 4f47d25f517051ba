namespace Tern.Tests.Cli;

/// <summary>The KV-cache flags of <c>tern generate</c> and <c>tern chat</c>: impossible settings stop the parse with one line
/// naming the flag and exit code 2, before any model is loaded (the model folder here does not exist).</summary>
public sealed class KvPolicyFlagTests
{
    static (int Code, string[] Lines) Run(params string[] args) => CliProcess.Errors(args);

    [Theory]
    [InlineData("--kv-policy lru", "tern: --kv-policy must be one of full, window, window-recompute, sink, h2o (got 'lru').")]
    [InlineData("--kv-policy sink", "tern: --kv-policy sink needs --kv-budget (a token count such as 512 or a ratio such as 0.2).")]
    [InlineData("--kv-policy sink --kv-budget 4", "tern: --kv-sink 4 must be smaller than --kv-budget 4: the budget holds the sinks and a recent window of at least one token.")]
    [InlineData("--kv-policy sink --kv-budget 64 --kv-sink 64", "tern: --kv-sink 64 must be smaller than --kv-budget 64: the budget holds the sinks and a recent window of at least one token.")]
    [InlineData("--kv-policy h2o --kv-budget 1.5", "tern: --kv-budget as a ratio must be in (0, 1] (got 1.5).")]
    [InlineData("--kv-policy h2o --kv-budget 0", "tern: --kv-budget must be at least 1 token (got 0).")]
    [InlineData("--kv-policy h2o --kv-budget 0.2 --kv-recent 0.3", "tern: --kv-recent 0.3 must not exceed --kv-budget 0.2.")]
    [InlineData("--kv-policy h2o --kv-budget 64 --kv-recent x", "tern: --kv-recent must be a token count such as 512 or a ratio such as 0.2 (got 'x').")]
    [InlineData("--kv-policy window --kv-budget 64 --kv-recent 8", "tern: --kv-recent applies to --kv-policy h2o only (got --kv-policy window).")]
    [InlineData("--kv-bits 3", "tern: --kv-bits must be 16, 8 or 4 (got 3).")]
    [InlineData("--kv-budget 64", "tern: --kv-budget does not apply to --kv-policy full, which keeps every entry.")]
    public void ImpossibleSettingsAreOneLineAndExitTwo(string flags, string message)
    {
        foreach (string command in new[] { "generate", "chat" })
        {
            var (code, lines) = Run(new[] { command, "--model", "no/such/folder" }.Concat(flags.Split(' ')).ToArray());
            Assert.Equal(2, code);
            Assert.Equal(new[] { message, $"Run 'tern {command} --help' for the options." }, lines);
        }
    }

    /// <summary>Valid flags pass the parse: the run then fails on the missing model folder (exit 1), not on a flag.</summary>
    [Theory]
    [InlineData("--kv-policy sink --kv-budget 512")]
    [InlineData("--kv-policy sink --kv-budget 0.2 --kv-sink 1 --kv-bits 4")]
    [InlineData("--kv-policy h2o --kv-budget 0.2 --kv-recent 0.1 --kv-bits 8")]
    [InlineData("--kv-policy window-recompute --kv-budget 256")]
    [InlineData("--kv-bits 8")]
    public void ValidSettingsPassTheParse(string flags)
    {
        var (code, lines) = Run(new[] { "generate", "--model", "no/such/folder" }.Concat(flags.Split(' ')).ToArray());
        Assert.Equal(1, code);
        Assert.Equal("tern: --model: the folder 'no/such/folder' does not exist.", Assert.Single(lines));
    }
}
