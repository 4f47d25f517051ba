using Tern.Caching;
using Tern.Checkpoints;
using Tern.Distillation;
using Tern.Generation;
using Tern.Models;
using Tern.Models.Hyena;
using Tern.Offloading;
using Tern.Runtime;
using Tern.Sparsity;
using TorchSharp;
using static TorchSharp.torch;
using Generator = Tern.Generation.Generator;

namespace Tern.Tests.Models;

/// <summary>Tiny MultiHyena language models built in code, saved as model folders (and distilled) for the tests.</summary>
internal static class TinyHyena
{
    internal const int Vocab = 64;

    /// <summary>Width 8, 2 layers, 2 heads of 4, filters of 48 taps.</summary>
    internal static HfConfig Config(int maxLength = 48) => HfConfig.Parse($$"""
        {"model_type": "multihyena", "vocab_size": {{Vocab}}, "hidden_size": 8, "num_hidden_layers": 2, "num_heads": 2,
         "intermediate_size": 16, "max_position_embeddings": {{maxLength}}, "filter_order": 8, "filter_emb_dim": 5,
         "filter_sine_freq": 2, "hidden_act": "gelu", "initializer_range": 0.2, "tie_word_embeddings": true,
         "bos_token_id": 1, "eos_token_id": 2}
        """);

    /// <summary>A fresh model saved in <paramref name="dir"/> (config.json + model.safetensors), as training writes one.</summary>
    internal static string Save(TempDir dir, long seed = 5, string name = "model")
    {
        string folder = dir.File(name);
        Directory.CreateDirectory(folder);
        using var model = CausalLanguageModel.CreateRandom(Config(), CPU, ModelDType.Float32, seed);
        File.WriteAllText(Path.Combine(folder, "config.json"), model.ConfigJson().ToJsonString());
        using (torch.no_grad()) SafetensorsWriter.Write(Path.Combine(folder, CheckpointReader.SingleFileName), model.StateDict());
        return folder;
    }

    /// <summary><paramref name="folder"/> distilled at S modes per filter into <paramref name="dir"/>/distilled.</summary>
    internal static string Distill(TempDir dir, string folder, int modes = 4)
    {
        string output = dir.File($"distilled-{modes}");
        HyenaDistiller.DistillModel(folder, output, new HyenaDistillOptions { Modes = modes, Fit = new ModalFitOptions { Iterations = 20 } });
        return output;
    }

    internal static CausalLanguageModel Load(string folder) => CausalLanguageModel.Load(folder, new ModelLoadOptions { Device = DeviceKind.Cpu });

    /// <summary>Rewrites the two-layer banks of a distilled <paramref name="folder"/> with pole <paramref name="mode"/> of filter
    /// <paramref name="filter"/> in layer <paramref name="layer"/> replaced by <paramref name="pole"/> (ModalFilters refuses to
    /// build an unstable bank, so the tensors are written directly).</summary>
    internal static void ReplacePole(string folder, int layer, int filter, int mode, System.Numerics.Complex pole)
    {
        var banks = ModalCheckpoint.Load(folder, new[] { 0, 1 });
        using var scope = torch.NewDisposeScope();
        Tensor Pairs(IEnumerable<System.Numerics.Complex> values, ModalFilters f) =>
            torch.tensor(values.SelectMany(v => new[] { v.Real, v.Imaginary }).ToArray(), new long[] { f.Channels, f.Modes, 2 });
        var tensors = new List<(string, Tensor)>();
        foreach (var (l, bank) in banks)
        {
            var poles = bank.Poles.ToArray();
            if (l == layer) poles[filter * bank.Modes + mode] = pole;
            tensors.Add(($"layers.{l}.poles", Pairs(poles, bank)));
            tensors.Add(($"layers.{l}.residues", Pairs(bank.Residues, bank)));
            tensors.Add(($"layers.{l}.direct", torch.tensor(bank.Direct.ToArray())));
        }
        SafetensorsWriter.Write(Path.Combine(folder, ModalCheckpoint.WeightsFile), tensors, new Dictionary<string, string> { ["convention"] = ModalCheckpoint.Convention });
    }
}

/// <summary>
/// The MultiHyena LM on the one execution core: generation, batching and chunked prefill through <see cref="Generator"/>
/// equal whole-sequence forward passes, undistilled (append-only cache of the convolution's inputs) and distilled (modal
/// recurrence), and the model saves and loads by name.
/// </summary>
public sealed class MultiHyenaModelTests : IDisposable
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    readonly TempDir dir = new();
    public void Dispose() => dir.Dispose();

    static readonly int[][] Prompts = { new[] { 5, 9, 13, 17, 21, 25, 30 }, new[] { 3, 40 }, new[] { 7, 8, 9, 10, 11 } };

    static GenerationOptions Greedy(int maxNew, int chunk = 0) => new() { MaxNewTokens = maxNew, StopTokenIds = Array.Empty<int>(), OutputLogits = true, PrefillChunk = chunk };

    /// <summary>The logits a whole-sequence forward pass gives at every position of <paramref name="tokens"/>, [T, V].</summary>
    static Tensor WholeSequence(CausalLanguageModel model, IReadOnlyList<int> tokens)
    {
        using var noGrad = torch.no_grad();
        using var cache = model.CreateCache(1, tokens.Count, maxStepTokens: tokens.Count);
        var batch = ForwardBatch.LeftPadded(new[] { tokens }, model.Device);
        return model.Forward(batch, cache)[0];
    }

    /// <summary>Every generated step's logits of sequence <paramref name="row"/> against the whole sequence's at the same positions.</summary>
    static double MaxDifference(CausalLanguageModel model, GenerationResult result, int row)
    {
        var sequence = result.Sequences[row];
        var all = sequence.PromptTokens.Concat(sequence.Tokens).ToArray();
        using var scope = torch.NewDisposeScope();
        var whole = WholeSequence(model, all);
        double worst = 0;
        for (int s = 0; s < sequence.Tokens.Count; s++)
            worst = Math.Max(worst, (result.Logits![s][row] - whole[sequence.PromptTokens.Count - 1 + s]).abs().max().item<float>());
        return worst;
    }

    [Theory]
    [InlineData(false, 0)]
    [InlineData(false, 3)]
    [InlineData(true, 0)]
    [InlineData(true, 3)]
    public void IncrementalGenerationEqualsTheWholeSequenceForward(bool distilled, int chunk)
    {
        string folder = TinyHyena.Save(dir);
        if (distilled) folder = TinyHyena.Distill(dir, folder);
        using var model = TinyHyena.Load(folder);
        var result = new Generator(model).GenerateTokens(new[] { Prompts[0] }, Greedy(12, chunk), cancellation: Ct);
        double difference = MaxDifference(model, result, 0);
        TestContext.Current.TestOutputHelper?.WriteLine($"distilled {distilled}, chunk {chunk}: max |Δlogit| {difference:E2}");
        Assert.True(difference < 1e-5, $"{difference}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void BatchedRowsOfDifferentLengthsEqualEachRowAlone(bool distilled)
    {
        string folder = TinyHyena.Save(dir);
        if (distilled) folder = TinyHyena.Distill(dir, folder);
        using var model = TinyHyena.Load(folder);
        var generator = new Generator(model);
        foreach (int chunk in new[] { 0, 4 })
        {
            var together = generator.GenerateTokens(Prompts, Greedy(10, chunk), cancellation: Ct);
            for (int i = 0; i < Prompts.Length; i++)
            {
                var alone = generator.GenerateTokens(new[] { Prompts[i] }, Greedy(10), cancellation: Ct);
                Assert.Equal(alone.Sequences[0].Tokens, together.Sequences[i].Tokens);
                for (int s = 0; s < 10; s++)
                    Assert.True((alone.Logits![s][0] - together.Logits![s][i]).abs().max().item<float>() < 1e-5, $"row {i}, step {s}, chunk {chunk}");
            }
        }
    }

    [Fact]
    public void DistilledRecurrentSteppingEqualsTheFftForwardOfTheModalKernels()
    {
        // The undistilled model's layers with the modal kernels ĥ as their filters, in convolution mode (FFT), against the
        // distilled model stepping token by token.
        string original = TinyHyena.Save(dir);
        string folder = TinyHyena.Distill(dir, original, modes: 3);
        using var model = (MultiHyenaModel)TinyHyena.Load(folder);
        var banks = ModalCheckpoint.Load(folder, new[] { 0, 1 });
        var tokens = Prompts[0].Concat(Prompts[2]).ToArray();
        using var scope = torch.NewDisposeScope();
        var stepped = new List<Tensor>();
        using (var cache = model.CreateCache(1, tokens.Length))
            foreach (var (token, t) in tokens.Select((x, i) => (x, i)))
                stepped.Add(model.Forward(new ForwardBatch
                {
                    InputIds = torch.tensor(new long[] { token }, new long[] { 1, 1 }), Positions = torch.tensor(new long[] { t }, new long[] { 1, 1 }),
                    RealTokens = new[] { 1 }, MaxPosition = t, LastPositionOnly = true,
                }, cache)[0]);
        // Reference: embedding, then per layer the same block with HyenaOperator.Forward(x, ĥ), then the head.
        using var weights = SafetensorsFile.Open(Path.Combine(folder, CheckpointReader.SingleFileName));
        Tensor W(string name) => weights.Load(name, ScalarType.Float32);
        var ids = torch.tensor(tokens.Select(x => (long)x).ToArray(), new long[] { 1, tokens.Length });
        var h = W("backbone.embeddings.word_embeddings.weight").index_select(0, ids.flatten()).unsqueeze(0);
        for (int l = 0; l < 2; l++)
        {
            using var op = model.Operator(l);
            using var recurrence = ModalRecurrence.Create(banks[l]);
            string p = $"backbone.layers.{l}.";
            var x = nn.functional.layer_norm(h, new long[] { 8 }, W(p + "mixer_norm.weight"), W(p + "mixer_norm.bias"), 1e-5);
            h = h + op.Forward(x, recurrence.Kernel(tokens.Length).unsqueeze(0));
            var m = nn.functional.layer_norm(h, new long[] { 8 }, W(p + "mlp_norm.weight"), W(p + "mlp_norm.bias"), 1e-5);
            h = h + nn.functional.linear(nn.functional.gelu(nn.functional.linear(m, W(p + "mlp.fc1.weight"), W(p + "mlp.fc1.bias"))), W(p + "mlp.fc2.weight"), W(p + "mlp.fc2.bias"));
        }
        var logits = nn.functional.linear(nn.functional.layer_norm(h, new long[] { 8 }, W("backbone.ln_f.weight"), W("backbone.ln_f.bias"), 1e-5),
            W("backbone.embeddings.word_embeddings.weight"))[0];
        var recurrent = torch.stack(stepped);
        double relative = ((recurrent - logits).norm() / logits.norm()).item<float>();
        TestContext.Current.TestOutputHelper?.WriteLine($"recurrent vs FFT of the modal kernels: relative {relative:E2}, max {(recurrent - logits).abs().max().item<float>():E2}");
        Assert.True(relative < 1e-5, $"{relative}");
    }

    [Fact]
    public void WeightsSaveAndLoadByName()
    {
        string folder = TinyHyena.Save(dir);
        using var source = CheckpointReader.Open(folder);
        foreach (string name in new[] { "backbone.embeddings.word_embeddings.weight", "backbone.layers.1.mixer.in_proj.weight",
                     "backbone.layers.0.mixer.short_filter.weight", "backbone.layers.0.mixer.filter_fn.implicit_filter.6.weight",
                     "backbone.layers.1.mixer.filter_fn.bias", "backbone.layers.1.mlp.fc2.bias", "backbone.ln_f.weight" })
            Assert.True(source.Contains(name), name);
        Assert.False(source.Contains("lm_head.weight")); // tied: the embedding, saved once
        using var fresh = CausalLanguageModel.CreateRandom(TinyHyena.Config(), CPU, ModelDType.Float32, seed: 5);
        using var loaded = TinyHyena.Load(folder);
        Assert.Equal("multihyena", loaded.Info.ModelType);
        Assert.Equal(fresh.Info.ParameterCount, loaded.Info.ParameterCount);
        using var scope = torch.NewDisposeScope();
        var tokens = Prompts[0];
        Assert.Equal(0, (WholeSequence(fresh, tokens) - WholeSequence(loaded, tokens)).abs().max().item<float>());
    }

    [Fact]
    public void CombinationsThatMakeNoSenseAreRefusedByOption()
    {
        string folder = TinyHyena.Save(dir);
        using var model = TinyHyena.Load(folder);
        var h2o = KvCachePolicies.Create(new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.Parse("8") });
        var e = Assert.Throws<OptionException>(() => model.CreateCache(1, 16, h2o));
        Assert.Equal(TernOption.KvPolicy, e.Option);
        var sink = KvCachePolicies.Create(new KvPolicyOptions { Policy = "sink", Budget = KvBudget.Parse("8"), Sinks = 2 });
        Assert.Throws<OptionException>(() => new Generator(model).GenerateTokens(new[] { Prompts[0] }, Greedy(2) with { Cache = sink }, cancellation: Ct));
        var bits = KvCachePolicies.Create(new KvPolicyOptions { Policy = "full", Bits = 8 });
        Assert.Equal(TernOption.KvBits, Assert.Throws<OptionException>(() => model.CreateCache(1, 16, bits)).Option);
        Assert.Equal(TernOption.Sparsity, Assert.Throws<OptionException>(() => model.Sparsity = DejaVuSparsity.Create(model, new SparsityOptions { MlpActive = 0.5, Rule = SelectionRule.Random })).Option);
        var offload = Assert.Throws<OptionException>(() => OffloadedModel.Load(folder, new ModelLoadOptions { Device = DeviceKind.Cpu },
            new OffloadOptions { Policy = OffloadPolicy.Parse("w=0/100/0,kv=0/100/0,act=0/100/0,gbs=1,ngb=1") }));
        Assert.Equal(TernOption.Offload, offload.Option);
    }

    [Fact]
    public void ADistilledFolderWithAnUnstablePoleOrAMissingBankIsRefusedNamingTheLayerAndFilter()
    {
        string folder = TinyHyena.Distill(dir, TinyHyena.Save(dir));
        TinyHyena.ReplacePole(folder, layer: 1, filter: 1, mode: 2, System.Numerics.Complex.FromPolarCoordinates(1.01, 0.3));
        var e = Assert.Throws<CheckpointException>(() => TinyHyena.Load(folder));
        Assert.Contains("layer 1, filter 1", e.Message);
        Assert.Contains("|λ|", e.Message);
        File.Delete(Path.Combine(folder, ModalCheckpoint.WeightsFile));
        Assert.Contains(ModalCheckpoint.WeightsFile, Assert.Throws<CheckpointException>(() => TinyHyena.Load(folder)).Message);
    }
}
