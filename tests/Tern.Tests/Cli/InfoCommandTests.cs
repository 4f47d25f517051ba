namespace Tern.Tests.Cli;

/// <summary><c>tern info</c> and <c>tern offload plan</c> on every architecture: both build the model on the meta device
/// (issue 18: GPT-NeoX's q|k|v reordering used a gather with no meta kernel and aborted the process, exit 134).</summary>
public sealed class InfoCommandTests
{
    [Theory]
    [InlineData("neox-parallel", "gpt_neox")]
    [InlineData("neox-sequential", "gpt_neox")]
    [InlineData("llama-gqa", "llama")]
    [InlineData("gpt2", "gpt2")]
    public void InfoAndPlanDescribeEveryArchitecture(string fixture, string modelType)
    {
        string folder = Fixtures.ModelDir(fixture);
        var (code, output, err) = CliProcess.Run("info", folder);
        Assert.True(code == 0, err);
        Assert.Contains($"architecture:  {modelType} ", output);
        Assert.Matches(@"parameters:\s+[\d,]+ ", output);

        (code, output, err) = CliProcess.Run("offload", "plan", "--model", folder, "--gpu-mem", "1GB", "--cpu-mem", "4GB");
        Assert.True(code == 0, err);
        Assert.Contains("policy:", output);
    }
}
