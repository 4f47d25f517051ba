using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;

namespace Tern.Tests.Models;

/// <summary><see cref="ModelLoadOptions.Progress"/>: fractions of the weights loaded, rising to 1, from a checkpoint and from
/// generated (dummy) weights alike (what <c>tern bench</c> shows while it loads).</summary>
public sealed class LoadProgressTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ProgressRisesToOne(bool dummy)
    {
        var reports = new List<double>();
        using var model = CausalLanguageModel.Load(Fixtures.ModelDir("llama-gqa"), new ModelLoadOptions
        {
            Device = DeviceKind.Cpu,
            DummyWeights = dummy ? new DummyWeightOptions() : null,
            Progress = new Tern.Cli.Commands.SyncProgress<double>(reports.Add),
        });
        Assert.True(reports.Count > 3, $"{reports.Count} reports");
        Assert.Equal(reports.Order(), reports);
        Assert.InRange(reports[0], 0, 0.5);
        Assert.Equal(1.0, reports[^1]);
        Assert.True(reports[^2] > 0.9, $"{reports[^2]} before the end: the count of elements to load is off");
    }
}
