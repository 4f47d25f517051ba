using Tern.Checkpoints;
using Tern.Generation;
using Tern.Models;
using Tern.Runtime;
using Tern.Serving;
using Generator = Tern.Generation.Generator;

namespace Tern.Tests;

/// <summary>
/// MultiHyena models (undistilled: the convolution's inputs in an append-only cache; distilled: the modal recurrence) stepped
/// with static shapes — CUDA graphs on a GPU, the same bodies without a graph on the CPU — by the generator and by serving
/// pools give the greedy tokens of the eager <see cref="Generator"/> (the CPU subclass runs in CI, the CUDA one on the GPU
/// machine).
/// </summary>
public abstract class HyenaStepContract : IDisposable
{
    /// <summary>The compute device.</summary>
    protected abstract DeviceKind Device { get; }

    /// <summary>True where static-shape steps are captured as CUDA graphs; else they run as they are (forced).</summary>
    protected abstract bool Graphs { get; }

    readonly TempDir dir = new();
    public void Dispose() => dir.Dispose();

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static readonly IReadOnlyList<int>[] Prompts = { new[] { 5, 9, 13, 17, 21, 25 }, new[] { 3, 40 }, new[] { 7, 8, 9, 10, 11, 12, 13, 14, 15 }, new[] { 33 } };

    /// <summary>Width 16, 2 layers, 4 heads of 4, filters of 96 taps, dummy weights (random stable banks of 4 modes when distilled).</summary>
    CausalLanguageModel Model(bool distilled)
    {
        string folder = Path.Combine(dir.Path, distilled ? "distilled" : "hyena");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), $$"""
            {"model_type": "multihyena", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_heads": 4, "intermediate_size": 32,
             "max_position_embeddings": 96, "filter_order": 8, "filter_emb_dim": 5, "filter_sine_freq": 2, "bos_token_id": 1, "eos_token_id": 2
             {{(distilled ? ", \"distilled\": {\"modes\": 4}" : "")}}}
            """);
        return CausalLanguageModel.Load(folder, new ModelLoadOptions { Device = Device, DummyWeights = new DummyWeightOptions { Seed = 3, Std = 0.3 } });
    }

    static GenerationOptions Greedy(int maxNew) => new() { MaxNewTokens = maxNew, IgnoreEos = true, UseCudaGraphs = false };

    GenerationOptions StaticShapes(GenerationOptions eager) => Graphs ? eager with { UseCudaGraphs = true } : eager with { ForceStaticShapes = true };

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void StaticShapeDecodeGivesTheEagerTokens(bool distilled)
    {
        using var model = Model(distilled);
        var expected = new Generator(model).GenerateTokens(Prompts, Greedy(40), Ct);
        var captured = new Generator(model).GenerateTokens(Prompts, StaticShapes(Greedy(40)), Ct);
        for (int i = 0; i < Prompts.Length; i++) Assert.Equal(expected.Sequences[i].Tokens, captured.Sequences[i].Tokens);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ServingPoolsWithStaticShapesGiveTheGeneratorsTokens(bool distilled)
    {
        using var model = Model(distilled);
        var expected = Prompts.Select((p, i) => new Generator(model).GenerateTokens(new[] { p }, Greedy(20 + 4 * i), Ct).Sequences[0].Tokens).ToArray();
        using var engine = ServingEngine.Start(model, null, new ServingOptions { MaxBatchSize = 4, UseCudaGraphs = Graphs, ForceStaticShapes = !Graphs, MaxPrefillTokensPerStep = 4 });
        var requests = Prompts.Select((p, i) => engine.Submit(p, Greedy(20 + 4 * i), Ct)).ToArray();
        for (int i = 0; i < Prompts.Length; i++) Assert.Equal(expected[i], (await requests[i].Completion).Tokens);
    }
}
