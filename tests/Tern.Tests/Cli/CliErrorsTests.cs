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

    [Fact]
    public void AnAllocationLibTorchRefusesIsOneLineNamingWhatToChange()
    {
        // A real failure of libtorch's allocator (the host's here; CUDA's reads "CUDA out of memory. Tried to allocate …").
        var e = Assert.ThrowsAny<System.Runtime.InteropServices.ExternalException>(() => TorchSharp.torch.empty(1L << 50).Dispose());
        Assert.True(CliErrors.IsUserError(e), e.GetType() + ": " + e.Message);
        string message = CliErrors.Message(e);
        Assert.StartsWith("host memory: can't allocate memory: you tried to allocate 4503599627370496 bytes.", message);
        Assert.DoesNotContain("\n", message);
        Assert.Contains("memory", message);
        Assert.Contains("--prefill-chunk", message);
        var cuda = new System.Runtime.InteropServices.ExternalException("CUDA out of memory. Tried to allocate 12.00 GiB. GPU 0 has a total capacity of 139.80 GiB of which 9.95 GiB is free. Including non-PyTorch memory, this process has 129.84 GiB memory in use.\nException raised from malloc");
        Assert.StartsWith("CUDA out of memory. Tried to allocate 12.00 GiB. GPU 0 has a total capacity of 139.80 GiB of which 9.95 GiB is free. Ask for less memory", CliErrors.Message(cuda));
    }
}
