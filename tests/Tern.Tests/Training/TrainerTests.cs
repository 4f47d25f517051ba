using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using Tern.Tests.Checkpoints;
using Tern.Training;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Tests.Training;

public class TrainerTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    internal const int Vocab = 64;
    const int Seq = 16;

    /// <summary>A tiny Llama: hidden 32, 2 layers, GQA (4 heads, 2 KV heads), relu gated MLP.</summary>
    internal static HfConfig TinyConfig(double initRange = 0.02, bool tied = false) => HfConfig.Parse($$"""
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": {{Vocab}}, "hidden_size": 32,
         "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "hidden_act": "relu", "initializer_range": {{initRange.ToString(System.Globalization.CultureInfo.InvariantCulture)}},
         "tie_word_embeddings": {{(tied ? "true" : "false")}}, "bos_token_id": 1, "eos_token_id": 2}
        """);

    /// <summary>A repetitive stream (a few fixed phrases in a seeded random order): learnable within tens of steps.</summary>
    internal static int[] Stream(int length, int seed)
    {
        var rng = new Random(seed);
        int[][] phrases = { new[] { 5, 9, 13, 17, 21, 25 }, new[] { 30, 31, 32, 33 }, new[] { 40, 7, 40, 8, 40, 9, 2 } };
        var ids = new List<int>();
        while (ids.Count < length) ids.AddRange(phrases[rng.Next(phrases.Length)]);
        return ids.Take(length).ToArray();
    }

    internal static TrainerOptions Options(TempDir dir, int steps = 12) => new()
    {
        OutputDirectory = dir.File("out"),
        TrainTokens = Tokens(dir, "train.bin", 4000, 1),
        ValidTokens = Tokens(dir, "valid.bin", 600, 2),
        SequenceLength = Seq, BatchSize = 4, GradientAccumulation = 2,
        LearningRate = 3e-3, WarmupSteps = 3, TotalSteps = steps, MinLearningRateRatio = 0.1,
        WeightDecay = 0.1, GradientClip = 1.0, EvalEvery = 4, EvalBatches = 2, CheckpointEvery = 4,
        Seed = 7, Device = DeviceKind.Cpu,
    };

    static string Tokens(TempDir dir, string name, int length, int seed)
    {
        string path = dir.File(name);
        if (!File.Exists(path)) TokenStream.Write(path, Stream(length, seed), TokenFileFormat.UInt16);
        return path;
    }

    [Fact]
    public void ScheduleWarmsUpLinearlyThenDecaysByCosineToTheMinimum()
    {
        double At(int s) => LearningRateSchedule.At(s, 1.0, 10, 110, 0.1);
        Assert.Equal(0.1, At(0), 12);
        Assert.Equal(0.5, At(4), 12);
        Assert.Equal(1.0, At(9), 12);
        Assert.Equal(1.0, At(10), 12);                          // peak: first decay step
        Assert.Equal(0.55, LearningRateSchedule.At(60, 1.0, 10, 111, 0.1), 12); // midpoint of a 100-step decay
        Assert.Equal(0.1, At(109), 12);                         // last step: the minimum
        Assert.Equal(0.1, At(500), 12);                         // past the end: stays there
        for (int s = 10; s < 109; s++) Assert.True(At(s + 1) < At(s));
    }

    [Fact]
    public void AutogradMatchesFiniteDifferences()
    {
        using var model = CausalLanguageModel.CreateRandom(TinyConfig(initRange: 0.2), torch.CPU, ModelDType.Float32, seed: 3);
        foreach (var p in model.Parameters) p.Tensor.requires_grad_(true);
        using var scope = torch.NewDisposeScope();
        var gen = new torch.Generator(11);
        var ids = torch.randint(0, Vocab, new long[] { 2, 9 }, generator: gen);
        var inputs = ids.narrow(1, 0, 8);
        var targets = ids.narrow(1, 1, 8);
        double Loss() => F.cross_entropy(model.ForwardTraining(inputs).reshape(-1, Vocab), targets.reshape(-1)).to(ScalarType.Float64).item<double>();

        F.cross_entropy(model.ForwardTraining(inputs).reshape(-1, Vocab), targets.reshape(-1)).backward();
        Assert.All(model.Parameters, p => Assert.True(p.Tensor.grad is not null, $"{p.Name} got no gradient"));
        Assert.Contains(model.Parameters, p => p.Parts.Count == 3); // the fused q|k|v
        int checkedCount = 0;
        foreach (var p in model.Parameters.Where(p => p.Name.Contains("layers.0.") || p.Name.StartsWith("model.embed") || p.Name == "model.norm.weight"))
        {
            var grad = p.Tensor.grad!.flatten();
            long index = grad.abs().argmax().item<long>();
            double analytic = grad[index].item<float>();
            var flat = p.Tensor.detach().view(-1);
            const double eps = 1e-2;
            double plus, minus;
            using (torch.no_grad())
            {
                float original = flat[index].item<float>();
                flat[index] = original + (float)eps; plus = Loss();
                flat[index] = original - (float)eps; minus = Loss();
                flat[index] = original;
            }
            double numeric = (plus - minus) / (2 * eps);
            Assert.True(Math.Abs(numeric - analytic) <= 1e-3 + 2e-2 * Math.Abs(analytic), $"{p.Name}[{index}]: autograd {analytic}, finite differences {numeric}");
            checkedCount++;
        }
        Assert.True(checkedCount >= 6);
    }

    [Fact]
    public void LossFallsOnARepetitiveStream()
    {
        using var dir = new TempDir();
        using var trainer = Trainer.Create(TinyConfig(), Options(dir, steps: 50) with { CheckpointEvery = 0, EvalEvery = 0, GradientAccumulation = 1 });
        var history = trainer.Run(cancellation: Ct);
        Assert.Equal(50, history.Count);
        double first = history.Take(3).Average(h => h.Loss), last = history.TakeLast(3).Average(h => h.Loss);
        Assert.True(last < 0.5 * first, $"loss went from {first:F3} to {last:F3}");
        Assert.True(history[^1].ValidLoss < 0.6 * Math.Log(Vocab), $"validation loss {history[^1].ValidLoss}");
    }

    [Fact]
    public void Bf16AutocastRunsMatrixProductsInBf16AndStillLearns()
    {
        using var dir = new TempDir();
        using var trainer = Trainer.Create(TinyConfig(), Options(dir, steps: 50) with
            { CheckpointEvery = 0, EvalEvery = 0, GradientAccumulation = 1, Autocast = ModelDType.BFloat16 });
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
        {
            var ids = torch.tensor(Stream(32, 3).Select(i => (long)i).ToArray()).view(2, 16);
            var exact = trainer.Model.ForwardTraining(ids);
            Tensor mixed;
            using (Autocast.Enter(ScalarType.BFloat16)) mixed = trainer.Model.ForwardTraining(ids);
            Assert.Equal(ScalarType.Float32, exact.dtype);
            Assert.Equal(ScalarType.BFloat16, mixed.dtype); // the LM head ran in bf16
            double error = (mixed.to(ScalarType.Float32) - exact).abs().max().item<float>();
            Assert.True(error is > 0 and < 0.05, $"bf16 logits differ from fp32 by {error}"); // > 0: bf16 really ran
        }
        Assert.Null(Autocast.Current); // the scope closed
        var history = trainer.Run(cancellation: Ct);
        Assert.All(trainer.Model.Parameters, p => Assert.Equal(ScalarType.Float32, p.Tensor.dtype)); // fp32 master weights
        double first = history.Take(3).Average(h => h.Loss), last = history.TakeLast(3).Average(h => h.Loss);
        Assert.True(last < 0.5 * first, $"loss went from {first:F3} to {last:F3}");
    }

    [Fact]
    public void AutocastOtherThanBf16OverFp32WeightsIsRefused()
    {
        using var dir = new TempDir();
        var fp16 = Assert.Throws<ArgumentException>(() => (Options(dir) with { Autocast = ModelDType.Float16 }).Validate());
        Assert.Contains("loss scaling", fp16.Message);
        var bf16Weights = Assert.Throws<ArgumentException>(() => (Options(dir) with { Autocast = ModelDType.BFloat16, DType = ModelDType.BFloat16 }).Validate());
        Assert.Contains("fp32", bf16Weights.Message);
        Assert.Throws<ArgumentException>(() => Autocast.Enter(ScalarType.Float32));
    }

    [Fact]
    public void ModelFlopsFollowPalmsCount()
    {
        var info = new ModelInfo
        {
            ModelType = "llama", VocabSize = 100, HiddenSize = 8, Layers = 2, Heads = 2, KvHeads = 2, HeadDim = 4, MaxPositions = 32,
            LearnedPositions = false, ParameterCount = 5000,
        };
        Assert.Equal(6.0 * 5000 + 12.0 * 2 * 8 * 32, ModelFlops.TrainingPerToken(info, 32, tiedEmbeddings: true));
        Assert.Equal(6.0 * (5000 - 800) + 12.0 * 2 * 8 * 32, ModelFlops.TrainingPerToken(info, 32, tiedEmbeddings: false));
        Assert.Equal(989.4e12, ModelFlops.PeakPerSecond("NVIDIA H100 80GB HBM3", ScalarType.BFloat16));
        Assert.Equal(756.0e12, ModelFlops.PeakPerSecond("NVIDIA H100 PCIe", ScalarType.BFloat16));
        Assert.Equal(66.9e12, ModelFlops.PeakPerSecond("NVIDIA H200", ScalarType.Float32));
        Assert.Null(ModelFlops.PeakPerSecond("AMD EPYC 7B13 (2 cores)", ScalarType.Float32));
    }

    [Fact]
    public void ResumingWithOptionsThatChangeTheRunIsRefused()
    {
        using var dir = new TempDir();
        var options = Options(dir);
        using (var trainer = Trainer.Create(TinyConfig(), options)) trainer.Run(stopAfterStep: 4, cancellation: Ct);
        var e = Assert.Throws<ArgumentException>(() => Trainer.Resume(options with { LearningRate = 1e-2, BatchSize = 8 }));
        Assert.Contains("learning_rate", e.Message);
        Assert.Contains("batch_size 4 → 8", e.Message);
        Assert.Contains("train-config.json", e.Message);
        Assert.Contains("factor_lr_scale null → 2", Assert.Throws<ArgumentException>(() => Trainer.Resume(options with { FactorLearningRateScale = 2 })).Message);
        // Cadence and file locations are free to change; a run config written before an option existed lacks its key, which
        // reads as the option's default.
        string config = Path.Combine(options.OutputDirectory, TrainerOptions.RunConfigFile);
        var saved = (System.Text.Json.Nodes.JsonObject)System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(config))!;
        Assert.True(saved.Remove("factor_lr_scale"));
        File.WriteAllText(config, saved.ToJsonString());
        using var resumed = Trainer.Resume(options with { EvalEvery = 1, CheckpointEvery = 2 });
        Assert.Equal(4, resumed.Step);
    }

    /// <summary>A save killed midway leaves its temporary folder; starting or resuming a run removes it (issue 18: they
    /// stayed forever), and the checkpoint itself is untouched.</summary>
    [Fact]
    public void StartingOrResumingRemovesTheTemporaryFoldersOfKilledSaves()
    {
        using var dir = new TempDir();
        var options = Options(dir);
        string Stale() => Directory.CreateDirectory(Path.Combine(options.OutputDirectory, $".checkpoint-{Guid.NewGuid():N}.tmp")).FullName;
        Directory.CreateDirectory(options.OutputDirectory);
        File.WriteAllText(Path.Combine(Stale(), "model.safetensors"), "half written");
        using (var trainer = Trainer.Create(TinyConfig(), options))
        {
            Assert.Empty(Directory.GetDirectories(options.OutputDirectory, ".checkpoint-*.tmp"));
            trainer.Run(stopAfterStep: 4, cancellation: Ct);
        }
        Stale();
        using var resumed = Trainer.Resume(options);
        Assert.Empty(Directory.GetDirectories(options.OutputDirectory, ".checkpoint-*.tmp"));
        Assert.Equal(4, resumed.Step);
    }

    [Fact]
    public void RunConfigFilesRoundTripAndNameTheirMistakes()
    {
        using var dir = new TempDir();
        var options = Options(dir) with { Autocast = ModelDType.BFloat16, TokenizerDirectory = "tok", LearningRate = 0.0125 };
        string path = dir.File("run.json");
        File.WriteAllText(path, options.ToJson().ToJsonString());
        var baseline = new TrainerOptions { OutputDirectory = options.OutputDirectory, TrainTokens = "", Device = DeviceKind.Cpu }; // the device is not a run option
        Assert.Equal(options with { OnCheckpointFile = null }, TrainerOptions.Load(path, baseline));

        File.WriteAllText(path, """{"batch_size": 8}""");
        Assert.Equal(baseline with { BatchSize = 8 }, TrainerOptions.Load(path, baseline)); // absent keys keep the baseline
        File.WriteAllText(path, """{"batch_sise": 8}""");
        Assert.Contains("unknown key \"batch_sise\"", Assert.Throws<ArgumentException>(() => TrainerOptions.Load(path, baseline)).Message);
        File.WriteAllText(path, """{"learning_rate": "fast"}""");
        Assert.Contains("\"learning_rate\" must be a Double", Assert.Throws<ArgumentException>(() => TrainerOptions.Load(path, baseline)).Message);
        File.WriteAllText(path, """{"dtype": "fp64"}""");
        Assert.Contains("\"dtype\" must be one of", Assert.Throws<ArgumentException>(() => TrainerOptions.Load(path, baseline)).Message);
        File.WriteAllText(path, "[1, 2");
        Assert.Contains("not a valid run config", Assert.Throws<ArgumentException>(() => TrainerOptions.Load(path, baseline)).Message);
    }

    static Dictionary<string, byte[]> Weights(CausalLanguageModel model) =>
        model.StateDict().ToDictionary(t => t.Name, t => t.Tensor.contiguous().bytes.ToArray());

    [Fact]
    public void ResumeAfterAKillGivesTheSameLossesAndBitIdenticalWeights()
    {
        using var full = new TempDir();
        List<double> reference;
        Dictionary<string, byte[]> referenceWeights;
        using (var trainer = Trainer.Create(TinyConfig(), Options(full)))
        {
            var history = trainer.Run(cancellation: Ct);
            reference = history.Select(h => h.Loss).ToList();
            referenceWeights = Weights(trainer.Model);
            Assert.Equal(12, trainer.Step);
        }

        using var split = new TempDir();
        var options = Options(split);
        using (var trainer = Trainer.Create(TinyConfig(), options))
        {
            var before = trainer.Run(stopAfterStep: 6, cancellation: Ct); // checkpoint at step 4; steps 5 and 6 are lost with the "killed" process
            Assert.Equal(reference.Take(6), before.Select(h => h.Loss));
        }
        using (var trainer = Trainer.Resume(options))
        {
            Assert.Equal(4, trainer.Step);
            var after = trainer.Run(cancellation: Ct);
            Assert.Equal(reference.Skip(4), after.Select(h => h.Loss)); // exact, not approximate
            var weights = Weights(trainer.Model);
            Assert.Equal(referenceWeights.Keys, weights.Keys);
            foreach (var (name, bytes) in referenceWeights) Assert.True(bytes.AsSpan().SequenceEqual(weights[name]), $"{name} differs after resume");
        }
    }

    [Fact]
    public void CorruptCheckpointsAreNamedAndAFailedSaveKeepsTheLastGoodOne()
    {
        using var dir = new TempDir();
        var options = Options(dir, steps: 8);
        using (var trainer = Trainer.Create(TinyConfig(), options)) trainer.Run(stopAfterStep: 4, cancellation: Ct); // checkpoint at 4
        string last = Path.Combine(options.OutputDirectory, TrainingCheckpoint.LastName);

        // A save that fails midway (here: while the optimizer file is being recorded) leaves checkpoint-last as it was.
        int failures = 0;
        var failing = options with { OnCheckpointFile = f => { if (f.EndsWith(TrainingCheckpoint.OptimizerFile)) { failures++; throw new IOException("disk full (simulated)"); } } };
        using (var trainer = Trainer.Resume(failing))
        {
            trainer.Run(stopAfterStep: 6, cancellation: Ct);
            Assert.Throws<IOException>(() => trainer.SaveCheckpoint());
        }
        Assert.Equal(1, failures);
        Assert.Equal(4, TrainingCheckpoint.Verify(last).Step);
        Assert.Empty(Directory.GetDirectories(options.OutputDirectory, ".checkpoint-*"));
        using (var trainer = Trainer.Resume(options)) Assert.Equal(4, trainer.Step);

        // A crash between the two renames of a save leaves only checkpoint-prev: it is found and used.
        string prev = Path.Combine(options.OutputDirectory, TrainingCheckpoint.PreviousName);
        Directory.Move(last, prev);
        using (var trainer = Trainer.Resume(options)) Assert.Equal(4, trainer.Step);
        Directory.Move(prev, last);

        // Truncated weights: named.
        string weights = Path.Combine(last, CheckpointReader.SingleFileName);
        byte[] good = File.ReadAllBytes(weights);
        File.WriteAllBytes(weights, good.AsSpan(0, good.Length / 2).ToArray());
        var e = Assert.Throws<TrainingCheckpointException>(() => Trainer.Resume(options));
        Assert.Contains(weights, e.Message);
        Assert.Contains("truncated", e.Message);
        File.WriteAllBytes(weights, good);

        // Same size, altered bytes: named.
        var altered = (byte[])good.Clone();
        altered[^5] ^= 0x55;
        File.WriteAllBytes(weights, altered);
        e = Assert.Throws<TrainingCheckpointException>(() => Trainer.Resume(options));
        Assert.Contains(weights, e.Message);
        File.WriteAllBytes(weights, good);

        // Garbage state JSON: named.
        string state = Path.Combine(last, TrainingCheckpoint.StateFile);
        File.WriteAllText(state, "{ \"step\": 4, garbage");
        e = Assert.Throws<TrainingCheckpointException>(() => Trainer.Resume(options));
        Assert.Contains(state, e.Message);
    }

    [Fact]
    public void TheSavedFolderLoadsAndGivesTheTrainedModelsLogits()
    {
        using var dir = new TempDir();
        var options = Options(dir, steps: 5) with { CheckpointEvery = 0, EvalEvery = 0 };
        using var trainer = Trainer.Create(TinyConfig(tied: true), options);
        trainer.Run(cancellation: Ct);
        foreach (string f in new[] { "config.json", "model.safetensors", "generation_config.json" })
            Assert.True(File.Exists(Path.Combine(options.OutputDirectory, f)), f);

        using var loaded = CausalLanguageModel.Load(options.OutputDirectory, new ModelLoadOptions { Device = DeviceKind.Cpu });
        using var scope = torch.NewDisposeScope();
        var prompt = new[] { new[] { 5, 9, 13, 17, 21, 25, 30, 31 }, new[] { 40, 7, 40, 8, 40, 9, 2, 5 } };
        var batch = ForwardBatch.LeftPadded(prompt, torch.CPU);
        using var cache = loaded.CreateCache(2, 8, maxStepTokens: 8);
        var fromDisk = loaded.Forward(batch, cache);
        Tensor inMemory;
        using (torch.no_grad()) inMemory = trainer.Model.ForwardTraining(batch.InputIds);
        Assert.Equal(new long[] { 2, 8, Vocab }, fromDisk.shape);
        Assert.True(fromDisk.allclose(inMemory, rtol: 0, atol: 1e-5), $"max difference {(fromDisk - inMemory).abs().max().item<float>()}");
    }

    [Fact]
    public void FrozenParametersStayPutAndExtraLossesAreAdded()
    {
        using var dir = new TempDir();
        int calls = 0;
        var options = Options(dir, steps: 3) with
        {
            CheckpointEvery = 0, EvalEvery = 0, ValidTokens = null,
            TrainParameter = name => name.EndsWith("norm.weight"),
            ExtraLoss = (model, inputs, logits) => { calls++; return logits.square().mean() * 0.01; },
        };
        using var trainer = Trainer.Create(TinyConfig(), options);
        var before = Weights(trainer.Model);
        var history = trainer.Run(cancellation: Ct);
        var after = Weights(trainer.Model);
        Assert.Equal(3 * options.GradientAccumulation, calls);
        foreach (var (name, bytes) in before)
            Assert.Equal(name.EndsWith("norm.weight"), !bytes.AsSpan().SequenceEqual(after[name]));
        Assert.All(history, h => Assert.Null(h.ValidLoss));
    }
}

/// <summary>Architectures whose loaded tensors are rewritten at load time cannot train yet, and say so; GPT-2's transposed
/// Conv1D weights train (saved transposed back).</summary>
public sealed class TrainableArchitectureTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData("neox-parallel")]
    public void RewrittenWeightsAreRefusedForTraining(string name)
    {
        var e = Assert.Throws<NotSupportedException>(() => Tern.Models.CausalLanguageModel.Load(Fixtures.ModelDir(name),
            new Tern.Models.ModelLoadOptions { Device = Tern.Runtime.DeviceKind.Cpu, Trainable = true }));
        Assert.Contains("not supported yet", e.Message);
    }

    /// <summary>A tiny GPT-2: hidden 32, 2 layers, 4 heads, MLP 128 (Rmax 16), learned positions, tied head.</summary>
    internal static HfConfig TinyGpt2() => HfConfig.Parse("""
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4,
         "n_positions": 64, "activation_function": "gelu_new", "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2}
        """);

    [Fact]
    public void Gpt2LoadsForTrainingWithItsCheckpointTensorsAndLogits()
    {
        var cpu = new ModelLoadOptions { Device = DeviceKind.Cpu };
        using var plain = CausalLanguageModel.Load(Fixtures.ModelDir("gpt2"), cpu);
        using var trainable = CausalLanguageModel.Load(Fixtures.ModelDir("gpt2"), cpu with { Trainable = true });
        using var scope = torch.NewDisposeScope();
        var ids = torch.tensor(new long[] { 3, 9, 14, 2, 7, 7, 1, 20 }).view(1, 8);
        using (var cache = plain.CreateCache(1, 8, maxStepTokens: 8))
        {
            var expected = plain.Forward(ForwardBatch.LeftPadded(new[] { new[] { 3, 9, 14, 2, 7, 7, 1, 20 } }, torch.CPU), cache);
            using var noGrad = torch.no_grad();
            Assert.True(trainable.ForwardTraining(ids).allclose(expected, rtol: 0, atol: 1e-5));
        }
        // The state dict is the checkpoint: Conv1D weights transposed back to [in, out].
        using var reader = CheckpointReader.Open(Fixtures.ModelDir("gpt2"));
        var state = trainable.StateDict().ToDictionary(t => t.Name, t => t.Tensor);
        Assert.Contains("transformer.h.0.mlp.c_fc.weight", state.Keys);
        foreach (var (name, tensor) in state)
        {
            string stored = reader.Names.Contains(name) ? name : name["transformer.".Length..];
            Assert.True(reader.LoadAsStored(stored).to(tensor.dtype).allclose(tensor.contiguous(), rtol: 0, atol: 0), $"{name} differs from the checkpoint");
        }
    }

    [Fact]
    public void AFreshGpt2TrainsAndItsSavedFolderGivesTheTrainedLogits()
    {
        using var dir = new TempDir();
        var options = TrainerTests.Options(dir, steps: 30) with { CheckpointEvery = 0, EvalEvery = 0, GradientAccumulation = 1 };
        using var trainer = Trainer.Create(TinyGpt2(), options);
        var history = trainer.Run(cancellation: Ct);
        double first = history.Take(3).Average(h => h.Loss), last = history.TakeLast(3).Average(h => h.Loss);
        Assert.True(last < 0.7 * first, $"loss went from {first:F3} to {last:F3}");
        using var loaded = CausalLanguageModel.Load(options.OutputDirectory, new ModelLoadOptions { Device = DeviceKind.Cpu });
        using var scope = torch.NewDisposeScope();
        var ids = torch.tensor(new long[] { 5, 9, 13, 17, 21, 25, 30, 31 }).view(1, 8);
        using var noGrad = torch.no_grad();
        using var cache = loaded.CreateCache(1, 8, maxStepTokens: 8);
        var fromDisk = loaded.Forward(ForwardBatch.LeftPadded(new[] { new[] { 5, 9, 13, 17, 21, 25, 30, 31 } }, torch.CPU), cache);
        Assert.True(fromDisk.allclose(trainer.Model.ForwardTraining(ids), rtol: 0, atol: 1e-5));
    }
}
