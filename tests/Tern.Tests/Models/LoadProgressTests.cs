using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;

namespace Tern.Tests.Models;

/// <summary><see cref="ModelLoadOptions.Progress"/>: fractions of the weights loaded, rising to 1, from a checkpoint and from
/// generated (dummy) weights alike, in memory or for offloading (what <c>tern bench</c>, and with <c>--offload</c> also
/// <c>generate</c> and <c>serve</c>, show while they load).</summary>
public sealed class LoadProgressTests
{
    /// <param name="offloaded">Loaded for offloading (FlexGen), to the host before its policy places the weights.</param>
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void ProgressRisesToOne(bool dummy, bool offloaded)
    {
        var reports = new List<double>();
        var load = new ModelLoadOptions
        {
            Device = DeviceKind.Cpu,
            DummyWeights = dummy ? new DummyWeightOptions() : null,
            Progress = new Tern.Cli.Commands.SyncProgress<double>(reports.Add),
        };
        using IDisposable model = offloaded
            ? Tern.Offloading.OffloadedModel.Load(Fixtures.ModelDir("llama-gqa"), load, new Tern.Offloading.OffloadOptions
            {
                Policy = Tern.Offloading.OffloadPolicy.Parse("w=50/50/0,kv=100/0/0,act=100/0/0"),
            })
            : CausalLanguageModel.Load(Fixtures.ModelDir("llama-gqa"), load);
        Assert.True(reports.Count > 3, $"{reports.Count} reports");
        Assert.Equal(reports.Order(), reports);
        Assert.InRange(reports[0], 0, 0.5);
        Assert.Equal(1.0, reports[^1]);
        Assert.True(reports[^2] > 0.9, $"{reports[^2]} before the end: the count of elements to load is off");
    }
}
