using Tern.Caching;
using Tern.Cli;
using Tern.Cli.Commands;
using Tern.Runtime;
using Tern.Serving;

namespace Tern.Tests.Cli;

/// <summary>Library errors as the command line prints them: options named by their flags.</summary>
public sealed class CliErrorsTests
{
    [Fact]
    public void AnOptionErrorAtRunTimeNamesTheFlag()
    {
        var error = new StringWriter();
        int code = Program.Run(new[] { "generate", "--model", "no/such/folder", "--top-p", "0" }, error);
        Assert.Equal(2, code); // a bad value, as the parser's errors
        Assert.StartsWith("tern: --top-p must be in (0, 1] (got 0).", error.ToString());
    }

    [Fact]
    public void OptionErrorsNameTheFlagsAndOtherErrorsKeepTheirMessage()
    {
        Assert.Equal("--kv-evict-every applies to --kv-policy sink, window and h2o (got --kv-policy full).", CliErrors.Message(
            Assert.Throws<OptionException>(() => new KvPolicyOptions { EvictEvery = 2 }.Validate())));
        Assert.Equal("--max-prefill-tokens must be at least 1 (got 0).", CliErrors.Message(
            Assert.Throws<OptionException>(() => new ServingOptions { MaxPrefillTokensPerStep = 0 }.Validate())));
        Assert.Equal("no such file", CliErrors.Message(new FileNotFoundException("no such file")));
    }
}
