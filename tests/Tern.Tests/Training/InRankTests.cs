using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using Tern.Tests.Checkpoints;
using Tern.Training;
using Tern.Training.InRank;
using TorchSharp;
using static TorchSharp.torch;
using static Tern.Tests.TensorChecks;

namespace Tern.Tests.Training;

/// <summary>InRank (issue 15): the released rank rule, the QR spectrum, the stage hand-off, exact resume, export.</summary>
public class InRankTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Small enough for the tiny Llama (hidden 32, intermediate 64: Rmax 16): checks from the 4th forward pass, every
    /// 2nd, rank discovery over 6 steps.</summary>
    static readonly InRankOptions Small = new() { InitialRank = 2, Buffer = 4, Warmup = 3, CheckEvery = 2, Stage1Steps = 6, Threshold = 0.9 };

    // s = [4, 2, 1, 0.5, 0, 0, 0, 0]: mean 0.9375, Σ(s − mean)² = 14.21875. By hand, for the tails s − s_k:
    // k = 1: [0, 2, 1, .5, 0…]  mean .4375,  Σ(dev²) = 3.71875  → g = 1 − 3.71875 / 14.21875 = 0.73846…
    // k = 2: [0, 0, 1, .5, 0…]  mean .1875,  Σ(dev²) = 0.96875  → g = 0.93187…
    // k = 3: [0, 0, 0, .5, 0…]  mean .0625,  Σ(dev²) = 0.21875  → g = 0.98462…
    // (the unbiased 1/(N − 1) cancels in the ratio).
    static readonly double[] Spectrum8 = { 4, 2, 1, 0.5, 0, 0, 0, 0 };

    [Fact]
    public void RankRuleMatchesAHandComputationOfTheReleasedFormula()
    {
        Assert.Equal(0, RankRule.ExplainedVariance(Spectrum8, 0), 12);
        Assert.Equal(1 - 3.71875 / 14.21875, RankRule.ExplainedVariance(Spectrum8, 1), 12);
        Assert.Equal(1 - 0.96875 / 14.21875, RankRule.ExplainedVariance(Spectrum8, 2), 12);
        Assert.Equal(1 - 0.21875 / 14.21875, RankRule.ExplainedVariance(Spectrum8, 3), 12);

        // r = 1, b = 3, Rmax = 8: k runs over 1..min(4, 5) − 1 = 1, 2, 3 and stops at the first g > α.
        Assert.Equal(new RankDecision(2, 1 - 0.96875 / 14.21875), RankRule.NextRank(Spectrum8, 1, 3, 8, 0.9));
        Assert.Equal(new RankDecision(3, 1 - 0.21875 / 14.21875), RankRule.NextRank(Spectrum8, 1, 3, 8, 0.95));
        Assert.Equal(new RankDecision(3, 1 - 0.21875 / 14.21875), RankRule.NextRank(Spectrum8, 1, 3, 8, 0.99)); // none passes: the last k
        Assert.Equal(2, RankRule.NextRank(Spectrum8, 2, 3, 8, 0.9).Rank);   // g(r) already passes: the rank stays
        Assert.Equal(4, RankRule.NextRank(Spectrum8, 4, 3, 8, 0.999).Rank); // r + 1 = Rmax − b: only k = r is tried
        var capped = RankRule.NextRank(Spectrum8, 5, 3, 8, 0.999);          // r = Rmax − b: no check
        Assert.Equal(5, capped.Rank);
        Assert.True(double.IsNaN(capped.Explained));

        // The trailing zeros count: without them g(2) = 1 − 0.6875 / 7.1875 = 0.90435 and α = 0.92 would pick 3, not 2.
        Assert.Equal(1 - 0.6875 / 7.1875, RankRule.ExplainedVariance(new double[] { 4, 2, 1, 0.5 }, 2), 12);
        Assert.Equal(3, RankRule.NextRank(new double[] { 4, 2, 1, 0.5 }, 1, 3, 8, 0.92).Rank);
        Assert.Equal(2, RankRule.NextRank(Spectrum8, 1, 3, 8, 0.92).Rank);
    }

    [Theory]
    [InlineData(40, 12, 30)]
    [InlineData(30, 7, 50)]
    [InlineData(10, 12, 20)] // more live components than rows
    public void QrSpectrumEqualsTheDirectSvd(int m, int live, int n)
    {
        using var scope = torch.NewDisposeScope();
        using var generator = new torch.Generator(42);
        var b = torch.randn(new long[] { m, live }, ScalarType.Float64, generator: generator);
        var a = torch.randn(new long[] { live, n }, ScalarType.Float64, generator: generator);
        double[] direct = torch.linalg.svdvals(b.matmul(a)).data<double>().ToArray();
        double[] viaQr = RankRule.Spectrum(b, a);
        Assert.Equal(Math.Min(m, n), viaQr.Length);
        for (int i = 0; i < direct.Length; i++) Assert.True(Math.Abs(direct[i] - viaQr[i]) < 1e-10 * direct[0], $"σ{i}: {direct[i]} vs {viaQr[i]}");
        Assert.All(viaQr.Skip(Math.Min(live, Math.Min(m, n))), v => Assert.Equal(0, v));
    }

    [Fact]
    public void TruncationSplitsTheRootOfTheSingularValuesIntoBothFactors()
    {
        using var scope = torch.NewDisposeScope();
        using var generator = new torch.Generator(5);
        var b = torch.randn(new long[] { 24, 9 }, ScalarType.Float64, generator: generator);
        var a = torch.randn(new long[] { 9, 16 }, ScalarType.Float64, generator: generator);
        var (newA, newB) = RankRule.Truncate(b, a, 4);
        Assert.Equal(new long[] { 4, 16 }, newA.shape);
        Assert.Equal(new long[] { 24, 4 }, newB.shape);
        var (u, s, vh) = torch.linalg.svd(b.matmul(a), fullMatrices: false);
        var best = (u.narrow(1, 0, 4) * s.narrow(0, 0, 4)).matmul(vh.narrow(0, 0, 4)); // Eckart–Young
        Assert.True(newB.matmul(newA).allclose(best, rtol: 0, atol: 1e-10));
        // Both factors carry √σ: their column / row norms are equal.
        Assert.True(newB.norm(0).allclose(newA.norm(1), rtol: 1e-10, atol: 0));
    }

    static HfConfig Config(InRankOptions options) => InRankTraining.Prepare(TrainerTests.TinyConfig(), options);

    static Tensor Logits(CausalLanguageModel model)
    {
        var ids = torch.tensor(new long[] { 5, 9, 13, 17, 21, 25, 30, 31, 40, 7, 40, 8, 40, 9, 2, 5 }).view(2, 8);
        using var noGrad = torch.no_grad();
        return model.ForwardTraining(ids);
    }

    [Theory]
    [InlineData(LowRankVariant.Efficient)]
    [InlineData(LowRankVariant.Original)]
    public void HandOffKeepsTheFunctionWhenTheTruncationKeepsEveryNonzeroSingularValue(LowRankVariant variant)
    {
        using var dir = new TempDir();
        var options = Small with { Variant = variant };
        using var model = CausalLanguageModel.CreateRandom(Config(options), torch.CPU, ModelDType.Float32, seed: 3);
        var inRank = InRankTraining.Start(model, options, seed: 3, dir.Path);
        var layout = model.LowRank!;
        Assert.Equal(1, layout.Stage);
        using (torch.no_grad())
            foreach (var (name, f) in layout.Linears)
            {
                Assert.Equal(16, f.Width);
                // Silence the buffer: the live product then has rank ≤ r, and truncating to r drops only zero singular values.
                var b = model.Parameters.Single(p => p.Name == name + ".weight_b").Tensor;
                b.narrow(1, f.Rank, layout.Buffer).zero_();
            }
        using var scope = torch.NewDisposeScope();
        var before = Logits(model);
        var resized = inRank.HandOff(step: 0);
        var after = Logits(model);
        Assert.Equal(2, layout.Stage);
        Assert.Equal(2 * layout.Linears.Count, resized.Count);
        foreach (var (name, f) in layout.Linears)
        {
            Assert.Equal(f.Rank, f.Width);
            Assert.Equal(f.Rank, model.Parameters.Single(p => p.Name == name + ".weight_a").Tensor.shape[0]);
            Assert.Equal(f.Rank, model.Parameters.Single(p => p.Name == name + ".weight_b").Tensor.shape[1]);
        }
        double diff = (after - before).abs().max().item<float>();
        Assert.True(diff < 1e-5, $"logits moved by {diff} across the hand-off");
    }

    [Fact]
    public void HandOffChangesTheFunctionWhenItDropsLiveComponents()
    {
        using var dir = new TempDir();
        using var model = CausalLanguageModel.CreateRandom(Config(Small), torch.CPU, ModelDType.Float32, seed: 3);
        var inRank = InRankTraining.Start(model, Small, seed: 3, dir.Path);
        using var scope = torch.NewDisposeScope();
        var before = Logits(model);
        inRank.HandOff(step: 0);
        Assert.True((Logits(model) - before).abs().max().item<float>() > 1e-4); // the buffer's components were live
    }

    static Dictionary<string, byte[]> Weights(CausalLanguageModel model) =>
        model.StateDict().ToDictionary(t => t.Name, t => t.Tensor.contiguous().bytes.ToArray());

    [Theory]
    [InlineData(MomentHandoff.Slice, false)]
    [InlineData(MomentHandoff.Reset, false)]
    [InlineData(MomentHandoff.Slice, true)]
    public void AKilledAndResumedInRankRunEndsByteIdentical(MomentHandoff moments, bool gpt2)
    {
        var inRank = Small with { Moments = moments };
        var config = gpt2 ? TrainableArchitectureTests.TinyGpt2() : TrainerTests.TinyConfig();
        using var full = new TempDir();
        List<double> reference;
        Dictionary<string, byte[]> referenceWeights;
        string referenceLog;
        var fullOptions = TrainerTests.Options(full) with { InRank = inRank };
        using (var trainer = Trainer.Create(config, fullOptions))
        {
            reference = trainer.Run(cancellation: Ct).Select(h => h.Loss).ToList();
            referenceWeights = Weights(trainer.Model);
            Assert.Equal(2, trainer.Model.LowRank!.Stage);
            referenceLog = File.ReadAllText(Path.Combine(fullOptions.OutputDirectory, RankLog.FileName));
        }
        var rows = TrainingLog.Read(Path.Combine(fullOptions.OutputDirectory, RankLog.FileName)).Select(r => r.Row).ToList();
        Assert.Contains(rows, r => r["handoff"] is not null && (int)r["step"]! == 6);
        Assert.True(rows.Count(r => r["top"] is not null) >= 4 * 6, "rank checks are logged per linear");
        foreach (var linear in rows.GroupBy(r => (string)r["linear"]!))
        {
            var ranks = linear.Select(r => (int)r["rank"]!).ToArray();
            Assert.True(ranks.Zip(ranks.Skip(1)).All(p => p.Second >= p.First), $"{linear.Key}: ranks {string.Join(",", ranks)} decrease");
            Assert.All(ranks, r => Assert.InRange(r, Small.InitialRank, 16 - Small.Buffer)); // capped at Rmax − b
        }

        using var split = new TempDir();
        var options = TrainerTests.Options(split) with { InRank = inRank };
        using (var trainer = Trainer.Create(config, options))
            Assert.Equal(reference.Take(6), trainer.Run(stopAfterStep: 6, cancellation: Ct).Select(h => h.Loss)); // killed after the hand-off; checkpoint at 4 (stage 1)
        using (var trainer = Trainer.Resume(options))
        {
            Assert.Equal(4, trainer.Step);
            Assert.Equal(1, trainer.Model.LowRank!.Stage);
            Assert.Equal(reference.Skip(4).Take(6), trainer.Run(stopAfterStep: 10, cancellation: Ct).Select(h => h.Loss)); // killed; checkpoint at 8 (stage 2)
        }
        using (var trainer = Trainer.Resume(options))
        {
            Assert.Equal(8, trainer.Step);
            Assert.Equal(2, trainer.Model.LowRank!.Stage);
            Assert.Equal(reference.Skip(8), trainer.Run(cancellation: Ct).Select(h => h.Loss));
            var weights = Weights(trainer.Model);
            Assert.Equal(referenceWeights.Keys, weights.Keys);
            foreach (var (name, bytes) in referenceWeights) Assert.True(bytes.AsSpan().SequenceEqual(weights[name]), $"{name} differs after resume");
        }
        Assert.Equal(referenceLog, File.ReadAllText(Path.Combine(options.OutputDirectory, RankLog.FileName)));
    }

    [Fact]
    public void SlicedAndResetMomentsTrainDifferently()
    {
        double Final(MomentHandoff moments)
        {
            using var dir = new TempDir();
            using var trainer = Trainer.Create(TrainerTests.TinyConfig(), TrainerTests.Options(dir, steps: 8) with { InRank = Small with { Moments = moments }, CheckpointEvery = 0 });
            return trainer.Run()[^1].Loss;
        }
        Assert.NotEqual(Final(MomentHandoff.Slice), Final(MomentHandoff.Reset));
    }

    [Fact]
    public void TheLowRankModelLoadsForGenerationAndExportsDense()
    {
        using var dir = new TempDir();
        var options = TrainerTests.Options(dir, steps: 8) with { InRank = Small, CheckpointEvery = 4 };
        using var trainer = Trainer.Create(TrainerTests.TinyConfig(), options);
        trainer.Run(stopAfterStep: 4, cancellation: Ct);
        string stage1 = dir.File("stage1");
        CopyFolder(Path.Combine(options.OutputDirectory, TrainingCheckpoint.LastName), stage1); // a stage-1 model: buffer live
        trainer.Run(cancellation: Ct);
        using var scope = torch.NewDisposeScope();
        var prompt = new[] { new[] { 5, 9, 13, 17, 21, 25, 30, 31 }, new[] { 40, 7, 40, 8, 40, 9, 2, 5 } };
        Tensor Generate(string folder)
        {
            using var model = CausalLanguageModel.Load(folder, new ModelLoadOptions { Device = DeviceKind.Cpu });
            using var cache = model.CreateCache(2, 8, maxStepTokens: 8);
            return model.Forward(ForwardBatch.LeftPadded(prompt, torch.CPU), cache);
        }
        Tensor inMemory;
        using (torch.no_grad()) inMemory = trainer.Model.ForwardTraining(ForwardBatch.LeftPadded(prompt, torch.CPU).InputIds);
        var lowRank = Generate(options.OutputDirectory);
        Assert.True(lowRank.allclose(inMemory, rtol: 0, atol: 1e-5));

        foreach (string folder in new[] { options.OutputDirectory, stage1 })
        {
            string dense = dir.File(Path.GetFileName(folder) + "-dense");
            CheckpointExport.Run(folder, dense, new ExportOptions { Dense = true });
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dense, "config.json")))!.AsObject();
            Assert.False(config.ContainsKey(LowRankLayout.ConfigKey));
            using (var reader = CheckpointReader.Open(dense))
            {
                Assert.DoesNotContain(reader.Names, n => n.EndsWith(".weight_a") || n.EndsWith(".weight_b"));
                Assert.Contains("model.layers.1.mlp.down_proj.weight", reader.Names);
            }
            var expected = Generate(folder);
            var actual = Generate(dense);
            double diff = (actual - expected).abs().max().item<float>();
            Assert.True(diff < 1e-4, $"{folder}: dense export differs by {diff}");
        }
    }

    /// <summary>The release's model: GPT-2 with both MLP linears (c_fc, c_proj) factored, in either variant, through the
    /// hand-off; the saved model loads, and its dense export (Conv1D [in, out] again) gives the same logits.</summary>
    [Theory]
    [InlineData(LowRankVariant.Efficient)]
    [InlineData(LowRankVariant.Original)]
    public void Gpt2TrainsWithInRankAndExportsDense(LowRankVariant variant)
    {
        using var dir = new TempDir();
        var options = TrainerTests.Options(dir, steps: 8) with { InRank = Small with { Variant = variant }, CheckpointEvery = 0 };
        using (var trainer = Trainer.Create(TrainableArchitectureTests.TinyGpt2(), options))
        {
            Assert.Equal(new[] { "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj" },
                trainer.Model.LowRank!.Linears.Keys);
            trainer.Run(cancellation: Ct);
            Assert.Equal(2, trainer.Model.LowRank.Stage);
        }
        string dense = dir.File("dense");
        CheckpointExport.Run(options.OutputDirectory, dense, new ExportOptions { Dense = true });
        using (var reader = CheckpointReader.Open(dense))
            Assert.Equal(new long[] { 32, 128 }, reader.LoadAsStored("transformer.h.0.mlp.c_fc.weight").shape); // Conv1D: [in, out]
        using var scope = torch.NewDisposeScope();
        var prompt = new[] { new[] { 5, 9, 13, 17, 21, 25, 30, 31 } };
        Tensor Logits(string folder)
        {
            using var model = CausalLanguageModel.Load(folder, new ModelLoadOptions { Device = DeviceKind.Cpu });
            using var cache = model.CreateCache(1, 8, maxStepTokens: 8);
            return model.Forward(ForwardBatch.LeftPadded(prompt, torch.CPU), cache);
        }
        Assert.True(Logits(dense).allclose(Logits(options.OutputDirectory), rtol: 0, atol: 1e-4));
    }

    static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
    }

    [Fact]
    public void TheOriginalVariantKeepsW0FrozenAndTrainsTheFactors()
    {
        using var dir = new TempDir();
        using var trainer = Trainer.Create(TrainerTests.TinyConfig(), TrainerTests.Options(dir, steps: 3) with
            { InRank = Small with { Variant = LowRankVariant.Original }, CheckpointEvery = 0, EvalEvery = 0 });
        var before = Weights(trainer.Model);
        var history = trainer.Run(cancellation: Ct);
        var after = Weights(trainer.Model);
        Assert.Contains("model.layers.0.mlp.up_proj.weight", before.Keys);
        foreach (var (name, bytes) in before)
        {
            bool frozen = name.Contains(".mlp.") && name.EndsWith(".weight");
            Assert.Equal(frozen, bytes.AsSpan().SequenceEqual(after[name]));
        }
        Assert.All(history, h => Assert.True(double.IsFinite(h.Loss)));
    }

    [Fact]
    public void TheFixedRankControlTrainsAtOneRankWithoutChecks()
    {
        using var dir = new TempDir();
        var options = TrainerTests.Options(dir, steps: 30) with { InRank = new InRankOptions { FixedRank = 5 }, CheckpointEvery = 0, EvalEvery = 0, GradientAccumulation = 1 };
        using var trainer = Trainer.Create(TrainerTests.TinyConfig(), options);
        var history = trainer.Run(cancellation: Ct);
        Assert.All(trainer.Model.LowRank!.Linears.Values, f => Assert.Equal((5, 5), (f.Rank, f.Width)));
        Assert.Equal(new long[] { 5, 32 }, trainer.Model.Parameters.Single(p => p.Name == "model.layers.0.mlp.up_proj.weight_a").Tensor.shape);
        Assert.False(File.Exists(Path.Combine(options.OutputDirectory, RankLog.FileName)));
        double first = history.Take(3).Average(h => h.Loss), last = history.TakeLast(3).Average(h => h.Loss);
        Assert.True(last < 0.7 * first, $"loss went from {first:F3} to {last:F3}");
    }

    /// <summary>A first AdamW step moves each weight by about the learning rate (m̂/√v̂ = ±1), so with the factors' rate scaled the
    /// factors move that many times further while every other parameter steps exactly as without the scale.</summary>
    [Fact]
    public void TheFactorLearningRateScaleMovesTheFactorsAlone()
    {
        Dictionary<string, float> Moves(double scale)
        {
            using var dir = new TempDir();
            var options = TrainerTests.Options(dir, steps: 1) with
            {
                InRank = new InRankOptions { FixedRank = 5 }, CheckpointEvery = 0, EvalEvery = 0, WeightDecay = 0, WarmupSteps = 0,
                FactorLearningRateScale = scale,
            };
            using var trainer = Trainer.Create(TrainerTests.TinyConfig(), options);
            using var scope = torch.NewDisposeScope();
            var before = trainer.Model.Parameters.ToDictionary(p => p.Name, p => p.Tensor.detach().clone());
            trainer.Run(cancellation: Ct);
            return trainer.Model.Parameters.ToDictionary(p => p.Name, p => (p.Tensor.detach() - before[p.Name]).abs().sum().item<float>());
        }
        var plain = Moves(1);
        var scaled = Moves(4);
        Assert.Contains("model.layers.0.mlp.up_proj.weight_a", plain.Keys);
        foreach (var (name, move) in plain)
        {
            if (name.EndsWith(".weight_a") || name.EndsWith(".weight_b")) Assert.InRange(scaled[name] / move, 3.9, 4.1);
            else Assert.Equal(move, scaled[name]);
        }
        using var other = new TempDir();
        Assert.Throws<ArgumentException>(() => (TrainerTests.Options(other, steps: 1) with { FactorLearningRateScale = 0 }).Validate());
    }

    /// <summary>The factors' own weight decay moves the factors alone: with it set to 0 under a run decay of 0.5 every other
    /// parameter steps exactly as before and the factors differently; set to the run's own decay, it changes nothing.</summary>
    [Fact]
    public void TheFactorWeightDecayMovesTheFactorsAlone()
    {
        Dictionary<string, Tensor> After(double? factorDecay)
        {
            using var dir = new TempDir();
            var options = TrainerTests.Options(dir, steps: 1) with
            {
                InRank = new InRankOptions { FixedRank = 5 }, CheckpointEvery = 0, EvalEvery = 0, WeightDecay = 0.5, WarmupSteps = 0,
                FactorWeightDecay = factorDecay,
            };
            using var trainer = Trainer.Create(TrainerTests.TinyConfig(), options);
            trainer.Run(cancellation: Ct);
            return trainer.Model.Parameters.ToDictionary(p => p.Name, p => p.Tensor.detach().clone()); // owned by the test's scope
        }
        using var scope = torch.NewDisposeScope();
        var run = After(null);
        var same = After(0.5);
        var none = After(0);
        Assert.Contains("model.layers.0.mlp.up_proj.weight_b", run.Keys);
        foreach (var (name, value) in run)
        {
            Assert.True(Same(value, same[name]), $"{name}: the run's own decay set explicitly changed it");
            bool factor = name.EndsWith(".weight_a") || name.EndsWith(".weight_b");
            Assert.True(factor != Same(value, none[name]), $"{name}: {(factor ? "a factor stepped as with decay" : "moved by the factors' decay")}");
        }
        using var other = new TempDir();
        Assert.Throws<ArgumentException>(() => (TrainerTests.Options(other, steps: 1) with { FactorWeightDecay = -1 }).Validate());
    }

    [Fact]
    public void OptionsThatDoNotFitAreRefusedByName()
    {
        var e = Assert.Throws<OptionException>(() => InRankTraining.Prepare(TrainerTests.TinyConfig(), new InRankOptions())); // buffer 100 > Rmax 16
        Assert.Equal(TernOption.InRankInitialRank, e.Options[0]);
        Assert.Contains(TernOption.InRankBuffer, e.Options);
        Assert.Contains("model.layers.0.mlp.gate_proj", e.Message);
        Assert.Throws<OptionException>(() => InRankTraining.Prepare(TrainerTests.TinyConfig(), new InRankOptions { FixedRank = 33 }));
        Assert.Equal(TernOption.InRankThreshold, Assert.Throws<OptionException>(() => (Small with { Threshold = 1.5 }).Validate()).Options[0]);
    }

    [Fact]
    public void RmaxFollowsTheMaxRankFraction()
    {
        // TinyConfig's MLP linears have full rank 32: released Rmax 16, so the rank cap is 16 − b; at fraction 1 it is 32 − b.
        Assert.All(LowRankLayout.FromConfig(Config(Small))!.Linears.Values, f => Assert.Equal(16, f.Width));
        Assert.All(LowRankLayout.FromConfig(Config(Small with { MaxRankFraction = 1 }))!.Linears.Values, f => Assert.Equal(32, f.Width));
        Assert.Equal(TernOption.InRankMaxRankFraction, Assert.Throws<OptionException>(() => (Small with { MaxRankFraction = 1.5 }).Validate()).Options[0]);
        Assert.Equal(TernOption.InRankMaxRankFraction, Assert.Throws<OptionException>(() => (Small with { MaxRankFraction = 0 }).Validate()).Options[0]);
        var e = Assert.Throws<OptionException>(() => Config(Small with { Buffer = 14, MaxRankFraction = 0.25 })); // 2 + 14 > Rmax 8
        Assert.Contains(TernOption.InRankMaxRankFraction, e.Options);
    }

    [Fact]
    public void RunConfigsCarryTheInRankOptions()
    {
        using var dir = new TempDir();
        var options = TrainerTests.Options(dir) with { InRank = Small with { Variant = LowRankVariant.Original, Moments = MomentHandoff.Reset }, FactorLearningRateScale = 2.5, FactorWeightDecay = 0 };
        string path = dir.File("run.json");
        File.WriteAllText(path, options.ToJson().ToJsonString());
        var baseline = new TrainerOptions { OutputDirectory = options.OutputDirectory, TrainTokens = "", Device = DeviceKind.Cpu };
        Assert.Equal(options, TrainerOptions.Load(path, baseline));
        File.WriteAllText(path, """{"inrank": {"bufer": 8}}""");
        Assert.Contains("inrank.bufer", Assert.Throws<ArgumentException>(() => TrainerOptions.Load(path, baseline)).Message);
        File.WriteAllText(path, """{"inrank": {"buffer": 8}}""");
        Assert.Equal(new InRankOptions { Buffer = 8 }, TrainerOptions.Load(path, baseline).InRank);
    }
}
