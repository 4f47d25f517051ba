using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Generation;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests;

/// <summary>
/// Logits and greedy tokens against Hugging Face transformers 5.17 on tiny random models (tools/fixtures/make_fixtures.py):
/// each prompt alone, the left-padded batch, and generate()'s greedy continuations. The CPU suite runs it on the CPU in fp32;
/// the GPU suite on CUDA in fp32 and bf16.
/// </summary>
public abstract class HfParityContract
{
    /// <summary>Where the model runs.</summary>
    protected abstract DeviceKind Device { get; }

    /// <summary>Compute type of the model under test.</summary>
    protected virtual ModelDType DType => ModelDType.Float32;

    /// <summary>Largest accepted |Δlogit| against the fp32 reference.</summary>
    protected virtual double Tolerance => 1e-4;

    /// <summary>Whether greedy tokens must match (only meaningful when the dtype resolves the fixtures' greedy margins).</summary>
    protected virtual bool CompareGreedyTokens => true;

    CausalLanguageModel Load(string name) => LoadFixture(name, DType, Device);

    public static TheoryData<string> FixtureModels => new()
    {
        "llama-gqa", "llama3-tied-bf16", "llama-linear-relu-f16", "mistral-window", "qwen2",
        "opt-prenorm", "opt-postnorm-proj", "neox-parallel", "neox-sequential", "gpt2",
    };

    internal sealed record Reference(long[][] Prompts, Tensor[] Logits, Tensor PaddedLogits, Tensor PaddedMask, long[][] Greedy, long[][] PaddedGreedy, int NewTokens) : IDisposable
    {
        public static Reference Load(string modelDir)
        {
            using var file = SafetensorsFile.Open(Path.Combine(modelDir, "reference.safetensors"));
            var ids = file.Load("input_ids");
            var mask = file.Load("attention_mask");
            int n = (int)ids.shape[0], len = (int)ids.shape[1];
            var prompts = new long[n][];
            for (int i = 0; i < n; i++)
            {
                var row = ids[i].data<long>().ToArray();
                var m = mask[i].data<long>().ToArray();
                prompts[i] = row.Where((_, t) => m[t] == 1).ToArray();
            }
            long[] Row(Tensor t) => t.data<long>().ToArray();
            var paddedGreedy = file.Load("greedy_padded");
            int newTokens = int.Parse(file.Metadata["new_tokens"]);
            return new Reference(prompts,
                Enumerable.Range(0, n).Select(i => file.Load($"logits_{i}")).ToArray(),
                file.Load("logits_padded"), mask,
                Enumerable.Range(0, n).Select(i => Row(file.Load($"greedy_{i}"))[prompts[i].Length..]).ToArray(),
                Enumerable.Range(0, n).Select(i => Row(paddedGreedy[i])[len..]).ToArray(), newTokens);
        }

        public void Dispose()
        {
            foreach (var t in Logits) t.Dispose();
            PaddedLogits.Dispose();
            PaddedMask.Dispose();
        }
    }

    internal static CausalLanguageModel LoadFixture(string name, ModelDType dtype = ModelDType.Float32, DeviceKind device = DeviceKind.Cpu) =>
        CausalLanguageModel.Load(Fixtures.ModelDir(name), new ModelLoadOptions { Device = device, DType = dtype });

    /// <summary>All logits of one left-padded batch, [B, T, V] fp32 on the CPU.</summary>
    internal static Tensor FullLogits(CausalLanguageModel model, IReadOnlyList<long[]> prompts)
    {
        int b = prompts.Count, len = prompts.Max(p => p.Length);
        using var cache = model.CreateCache(b, len, maxStepTokens: len);
        using var scope = torch.NewDisposeScope();
        var batch = ForwardBatch.LeftPadded(prompts.Select(p => (IReadOnlyList<int>)p.Select(x => (int)x).ToArray()).ToArray(), model.Device);
        return model.Forward(batch, cache).to(ScalarType.Float32).cpu().MoveToOuterDisposeScope();
    }

    internal static double MaxAbsDiff(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    [Theory]
    [MemberData(nameof(FixtureModels))]
    public void LogitsOfEachPromptMatchTransformers(string name)
    {
        using var model = Load(name);
        using var reference = Reference.Load(Fixtures.ModelDir(name));
        for (int i = 0; i < reference.Prompts.Length; i++)
        {
            using var logits = FullLogits(model, new[] { reference.Prompts[i] });
            double diff = MaxAbsDiff(logits[0], reference.Logits[i]);
            Assert.True(diff <= Tolerance, $"{name} prompt {i}: max |Δlogit| = {diff:E2}");
        }
    }

    [Theory]
    [MemberData(nameof(FixtureModels))]
    public void LogitsOfThePaddedBatchMatchTransformers(string name)
    {
        using var model = Load(name);
        using var reference = Reference.Load(Fixtures.ModelDir(name));
        using var logits = FullLogits(model, reference.Prompts);
        using var real = reference.PaddedMask.to(ScalarType.Bool).unsqueeze(-1);
        double diff = MaxAbsDiff(logits.masked_fill(real.logical_not(), 0), reference.PaddedLogits.masked_fill(real.logical_not(), 0));
        Assert.True(diff <= Tolerance, $"{name} padded batch: max |Δlogit| = {diff:E2}");
    }

    [Theory]
    [MemberData(nameof(FixtureModels))]
    public void GreedyTokensMatchGenerate(string name)
    {
        Assert.SkipUnless(CompareGreedyTokens, $"greedy tokens are not compared in {DType}: the fixtures' greedy margins are below its resolution");
        using var model = Load(name);
        using var reference = Reference.Load(Fixtures.ModelDir(name));
        var generator = new Tern.Generation.Generator(model);
        var options = new GenerationOptions { MaxNewTokens = reference.NewTokens, IgnoreEos = true };
        var prompts = reference.Prompts.Select(p => (IReadOnlyList<int>)p.Select(x => (int)x).ToArray()).ToArray();
        for (int i = 0; i < prompts.Length; i++)
        {
            var single = generator.GenerateTokens(new[] { prompts[i] }, options, cancellation: TestContext.Current.CancellationToken).Sequences[0].Tokens;
            Assert.Equal(reference.Greedy[i].Select(x => (int)x), single);
        }
        var batch = generator.GenerateTokens(prompts, options, cancellation: TestContext.Current.CancellationToken).Sequences;
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(reference.PaddedGreedy[i].Select(x => (int)x), batch[i].Tokens);
    }

    /// <summary>A transformers 4.x config (top-level rope_theta and rope_scaling / rotary_pct) loads into the same model.</summary>
    [Theory]
    [InlineData("llama3-tied-bf16")]
    [InlineData("llama-linear-relu-f16")]
    [InlineData("neox-parallel")]
    public void Transformers4ConfigGivesTheSameLogits(string name)
    {
        string source = Fixtures.ModelDir(name);
        string dir = Directory.CreateTempSubdirectory("tern-v4config-").FullName;
        try
        {
            foreach (var f in Directory.GetFiles(source)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "config.json")))!.AsObject();
            var rope = config["rope_parameters"]!.AsObject();
            config.Remove("rope_parameters");
            config["rope_theta"] = rope["rope_theta"]!.GetValue<double>();
            if (rope["partial_rotary_factor"] is JsonNode partial) config["rotary_pct"] = partial.GetValue<double>();
            if (rope["rope_type"]!.GetValue<string>() != "default")
            {
                var scaling = new JsonObject { ["type"] = rope["rope_type"]!.GetValue<string>() };
                foreach (var kv in rope)
                    if (kv.Key is not ("rope_theta" or "rope_type" or "partial_rotary_factor")) scaling[kv.Key] = kv.Value!.DeepClone();
                config["rope_scaling"] = scaling;
            }
            File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());

            using var reference = Reference.Load(source);
            using var v5 = Load(name);
            using var v4 = CausalLanguageModel.Load(dir, new ModelLoadOptions { Device = Device, DType = DType });
            using var a = FullLogits(v5, reference.Prompts);
            using var b = FullLogits(v4, reference.Prompts);
            Assert.Equal(0.0, MaxAbsDiff(a, b));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
