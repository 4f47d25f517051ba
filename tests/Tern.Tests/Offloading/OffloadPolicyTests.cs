using Tern.Models;
using Tern.Offloading;
using Tern.Runtime;

namespace Tern.Tests.Offloading;

/// <summary>The policy's string form, its validation, whole-tensor placement and the per-sequence split.</summary>
public sealed class OffloadPolicyTests
{
    [Fact]
    public void ParsesEveryKeyAndRoundTrips()
    {
        var p = OffloadPolicy.Parse("w=20/80/0, kv=0/100/0,act=0/50/50,gbs=48,ngb=3,wbits=4,overlap=off");
        Assert.Equal(new TierFractions(0.2, 0.8, 0), p.Weights);
        Assert.Equal(new TierFractions(0, 1, 0), p.Cache);
        Assert.Equal(new TierFractions(0, 0.5, 0.5), p.Activations);
        Assert.Equal((48, 3, 144), (p.GpuBatchSize, p.NumGpuBatches, p.BlockSize));
        Assert.True(p.CompressWeights);
        Assert.False(p.Overlap);
        Assert.Equal(p, OffloadPolicy.Parse(p.ToString()));
        Assert.Equal(OffloadPolicy.AllGpu(), OffloadPolicy.Parse("gbs=1")); // unnamed keys keep their defaults
    }

    [Theory]
    [InlineData("w=20/80", "three percentages")]
    [InlineData("w=20/70/0", "sum to 100%")]
    [InlineData("kv=-10/110/0", "between 0 and 100%")]
    [InlineData("act=a/b/c", "'a' is not a number")]
    [InlineData("gbs=0", "at least 1")]
    [InlineData("ngb=two", "not a whole number")]
    [InlineData("wbits=8", "use 16")]
    [InlineData("overlap=maybe", "use on or off")]
    [InlineData("speed=11", "unknown key 'speed'")]
    [InlineData("w", "not key=value")]
    [InlineData("", "empty")]
    public void RejectsBadPoliciesNamingTheItem(string text, string expected)
    {
        var e = Assert.Throws<ArgumentException>(() => OffloadPolicy.Parse(text));
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData("kvbits=4,cpu-attn=on,kv=0/100/0")]
    [InlineData("cpu-attn=on,kv=50/50/0")]
    public void RefusesWhatTheEngineCannotDoYet(string text) => Assert.Throws<NotSupportedException>(() => OffloadPolicy.Parse(text));

    [Fact]
    public void PlacementFollowsTheByteSharesTensorByTensor()
    {
        // 48 blocks of FlexGen's OPT-30B tensor sizes (q, k, v, out: h², fc1, fc2: 4h²) at w = 20/80/0.
        var bytes = Enumerable.Range(0, 48).SelectMany(_ => new long[] { 1, 1, 1, 1, 4, 4 }).ToArray();
        var tiers = WeightPlacement.Assign(bytes, new TierFractions(0.2, 0.8, 0));
        double gpu = bytes.Where((b, i) => tiers[i] == Tier.Gpu).Sum() / (double)bytes.Sum();
        Assert.InRange(gpu, 0.19, 0.21);                      // FlexGen's midpoint rule gives 1/12 here
        Assert.DoesNotContain(Tier.Disk, tiers);
        // Every prefix of layers holds the share within one tensor: the per-layer loads stay even.
        double placed = 0, total = 0;
        for (int i = 0; i < bytes.Length; i++)
        {
            total += bytes[i];
            if (tiers[i] == Tier.Gpu) placed += bytes[i];
            Assert.InRange(placed - 0.2 * total, -4, 4);
        }
        Assert.All(WeightPlacement.Assign(bytes, TierFractions.All(Tier.Disk)), t => Assert.Equal(Tier.Disk, t));
    }

    [Theory]
    [InlineData(0.5, 0.5, 0, 5, 2, 3, 0)]    // GPU rounds down, the CPU takes the rest
    [InlineData(0.34, 0.33, 0.33, 6, 2, 1, 3)] // with a disk share the CPU rounds down too
    [InlineData(1, 0, 0, 3, 3, 0, 0)]
    [InlineData(0, 0, 1, 4, 0, 0, 4)]
    public void SequencesSplitWhole(double g, double c, double d, int rows, int eg, int ec, int ed) =>
        Assert.Equal((eg, ec, ed), new TierFractions(g, c, d).SplitRows(rows));
}

/// <summary>Impossible settings fail before generation with errors that name the fix, and leave no files behind.</summary>
public sealed class OffloadErrorTests
{
    static OffloadedModel Load(string policy, string? dir, long? gpuLimit = null) =>
        OffloadedModel.Load(Fixtures.ModelDir("opt-prenorm"), new ModelLoadOptions { Device = DeviceKind.Cpu },
            new OffloadOptions { Policy = OffloadPolicy.Parse(policy), Directory = dir, GpuMemoryLimit = gpuLimit });

    [Fact]
    public void DiskShareWithoutADirectoryIsAnError() =>
        Assert.Equal(TernOption.OffloadDirectory, Assert.Throws<OptionException>(() => Load("w=0/0/100", null)).Option);

    [Fact]
    public void MissingDirectoryIsAnError()
    {
        string missing = Path.Combine(Path.GetTempPath(), "tern-no-such-dir-" + Guid.NewGuid().ToString("N"));
        var e = Assert.Throws<DirectoryNotFoundException>(() => Load("kv=0/0/100", missing));
        Assert.Contains(missing, e.Message);
        Assert.False(Directory.Exists(missing));
    }

    [Fact]
    public void UnwritableDirectoryIsAnError() =>
        // /proc refuses new folders even to root.
        Assert.Contains("not writable", Assert.Throws<UnauthorizedAccessException>(() => Load("kv=0/0/100", "/proc")).Message);

    [Fact]
    public void AFullDiskFailsWhenSpaceIsReservedAndLeavesNoFile()
    {
        using var temp = new TempDir();
        string parent = temp.Path;
        using var directory = OffloadDirectory.Create(parent);
        // More than any disk holds: the reservation (posix_fallocate) fails as a full disk does.
        var e = Assert.Throws<IOException>(() => directory.CreateFile("huge", 1L << 60));
        Assert.Contains("cannot reserve", e.Message);
        Assert.Empty(Directory.GetFiles(directory.Path));
    }

    [Fact]
    public void GpuCapTooSmallIsAnErrorAndCleansUp()
    {
        using var temp = new TempDir();
        string parent = temp.Path;
        var e = Assert.Throws<InvalidOperationException>(() => Load("w=100/0/0,kv=0/0/100", parent, gpuLimit: 1000));
        Assert.Contains("GPU memory limit", e.Message);
        Assert.Empty(Directory.GetFileSystemEntries(parent));
        // The weights fit, the block's KV cache and buffers do not: the error comes at generation and the block's files go.
        using var model = Load("w=0/100/0,kv=100/0/0,gbs=8", parent, gpuLimit: 20_000);
        Assert.Throws<InvalidOperationException>(() => model.Generate(new[] { new[] { 5, 6, 7 } }, 4));
        Assert.Empty(Directory.GetFiles(model.OffloadPath ?? parent));
    }

    [Fact]
    public void PeakGpuBytesStayUnderTheCap()
    {
        using var model = Load("w=50/50/0,kv=50/50/0,act=0/100/0,gbs=2,ngb=2", null, gpuLimit: 1 << 20);
        model.Generate(new[] { new[] { 5, 6, 7 }, new[] { 8, 9 }, new[] { 10 } }, 3);
        Assert.InRange(model.PeakGpuBytes, 1, 1 << 20);
        Assert.True(model.WeightBytesOn(Tier.Gpu) > 0 && model.WeightBytesOn(Tier.Cpu) > 0);
    }
}
