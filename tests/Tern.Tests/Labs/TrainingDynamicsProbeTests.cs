using Tern.Labs;
using Tern.Models;
using Tern.Runtime;
using Tern.Tests.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Labs;

public sealed class TrainingDynamicsProbeTests
{
    static IReadOnlyList<IReadOnlyList<int>> Windows(int count, int length) =>
        Enumerable.Range(0, count).Select(b => (IReadOnlyList<int>)Enumerable.Range(0, length).Select(i => (7 * i + 3 * b) % 60 + 3).ToArray()).ToArray();

    [Fact]
    public void UniformCausalAttentionHasTheUniformEntropyAndTrainedLikeWeightsHaveLess()
    {
        Assert.Equal(2.6325, TrainingDynamicsProbe.UniformCausalEntropy(35), 4); // JoMA's plotted ceiling for 35 positions
        using var model = CausalLanguageModel.CreateRandom(TrainerTests.TinyConfig(initRange: 0.5), torch.CPU, ModelDType.Float32, seed: 5);
        var windows = Windows(2, 24);
        double[] random = TrainingDynamicsProbe.AttentionEntropy(model, windows);
        double uniform = TrainingDynamicsProbe.UniformCausalEntropy(24);
        Assert.Equal(2, random.Length);
        Assert.All(random, h => Assert.True(h < uniform - 0.05, $"entropy {h:F4} vs uniform {uniform:F4}"));
        // Zero query/key projections: every logit 0, so each row is uniform over its visible keys.
        using (torch.no_grad())
            foreach (var p in model.Parameters.Where(p => p.Name.Contains("qkv_proj") || p.Name.Contains("q_proj") || p.Name.Contains("k_proj")))
                p.Tensor.zero_();
        Assert.All(TrainingDynamicsProbe.AttentionEntropy(model, windows), h => Assert.Equal(uniform, h, 5));
    }

    [Fact]
    public void StableRankOfKnownMatrices()
    {
        using var scope = torch.NewDisposeScope();
        Assert.Equal(11.0 / 9, TrainingDynamicsProbe.StableRank(torch.diag(torch.tensor(new[] { 3f, 1f, 1f }))), 5);
        Assert.Equal(1.0, TrainingDynamicsProbe.StableRank(torch.ones(5, 7)), 5);
        Assert.Equal(6.0, TrainingDynamicsProbe.StableRank(torch.eye(6)), 5);
        // An i.i.d. Gaussian 200×200: ≈ mn / (√m + √n)² = 50 (JoMA brief's sanity anchor).
        Assert.InRange(TrainingDynamicsProbe.StableRank(torch.randn(200, 200, generator: new Generator(1))), 45, 56);
    }

    [Fact]
    public void ARecordedRunWritesOneRowPerLayerAndStepAndDrawsThem()
    {
        using var dir = new TempDir();
        using var model = CausalLanguageModel.CreateRandom(TrainerTests.TinyConfig(), torch.CPU, ModelDType.Float32, seed: 5);
        var probe = TrainingDynamicsProbe.Create(dir.File("probe"), Windows(2, 16));
        probe.Record(model, 0);
        probe.Record(model, 10);
        var lines = File.ReadAllLines(probe.CsvPath);
        Assert.Equal("step,layer,attention_entropy,uniform_entropy,stable_rank_gate,stable_rank_up,stable_rank_down", lines[0]);
        Assert.Equal(new[] { "0,0", "0,1", "10,0", "10,1" }, lines.Skip(1).Select(l => string.Join(',', l.Split(',').Take(2))));
        Assert.All(lines.Skip(1), l => Assert.All(l.Split(',').Skip(4), v => Assert.InRange(double.Parse(v, System.Globalization.CultureInfo.InvariantCulture), 1.0, 64)));

        // A resumed run at step 0 drops the rows written after it.
        TrainingDynamicsProbe.Create(dir.File("probe"), Windows(2, 16), resumedStep: 0);
        Assert.Equal(3, File.ReadAllLines(probe.CsvPath).Length);
        probe.Record(model, 10);
        var pngs = TrainingDynamicsProbe.Plot(probe.CsvPath, "tiny");
        Assert.Equal(new[] { "attention-entropy.png", "stable-rank-gate.png", "stable-rank-up.png", "stable-rank-down.png" }, pngs.Select(Path.GetFileName));
        Assert.All(pngs, p => Assert.True(new FileInfo(p).Length > 2000));
    }
}
