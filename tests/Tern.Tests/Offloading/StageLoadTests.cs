using Tern.Models;
using Tern.Offloading;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Offloading;

/// <summary>A stage's weights loaded in shares (one per GPU batch): every byte arrives once, in order, whatever the split.</summary>
public sealed class StageLoadTests
{
    [Theory]
    [InlineData(Tier.Cpu, 1)]
    [InlineData(Tier.Cpu, 7)]
    [InlineData(Tier.Disk, 3)]
    public void SharesCoverTheStageOnceAndInOrder(Tier tier, int shares)
    {
        using var dir = new TempDir();
        using var scope = torch.NewDisposeScope();
        // Tensors larger than one piece's alignment, so a share ends inside a tensor.
        var big = torch.arange(700_000, ScalarType.Float32).reshape(700, 1000);
        var small = torch.arange(300, ScalarType.Float32).neg();
        var odd = torch.arange(200_001, ScalarType.Float32).mul(0.5);
        var expected = new[] { big.clone(), small.clone(), odd.clone() };
        using var directory = OffloadDirectory.Create(dir.Path);
        using var engine = new BackgroundTransferEngine();
        var part = new PartWeights("stage.");
        part.Add("big", big);
        part.Add("small", small);
        part.Add("odd", odd);
        using var weights = OffloadedWeights.Place(new[] { part }, TierFractions.All(tier),
            compress: false, torch.CPU, engine, directory);
        using var load = weights.Begin(0, engine, torch.CPU);
        Assert.Equal(expected.Sum(t => t.NumberOfElements * 4), load.TotalBytes);
        long previous = 0;
        for (int k = 0; k < shares; k++)
        {
            load.IssueThrough((k + 1.0) / shares);
            // Each share reaches its goal and overshoots by less than one piece.
            Assert.InRange(load.IssuedBytes, Math.Min(load.TotalBytes, (long)((k + 1.0) / shares * load.TotalBytes)),
                (long)((k + 1.0) / shares * load.TotalBytes) + 4 * OffloadedWeights.StageLoad.Alignment);
            Assert.True(load.IssuedBytes >= previous);
            previous = load.IssuedBytes;
        }
        Assert.Equal(load.TotalBytes, load.IssuedBytes);
        engine.Synchronize();
        var got = load.Weights;
        Assert.Equal(part.Names, got.Names);
        Assert.Equal(expected[0].data<float>().ToArray(), got["big"].data<float>().ToArray());
        Assert.Equal(expected[1].data<float>().ToArray(), got["small"].data<float>().ToArray());
        Assert.Equal(expected[2].data<float>().ToArray(), got["odd"].data<float>().ToArray());
    }
}
