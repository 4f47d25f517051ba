using Tern.Generation;
using Tern.Models;
using Tern.Offloading;
using Tern.Runtime;
using Tern.Sparsity;

namespace Tern.Tests.Sparsity;

/// <summary>DejaVu through offloading: an offloaded model runs each layer of a step as a stage, the GPU batches of a block one
/// after another, so each batch keeps its own selector (a lookahead predictor's choice for layer ℓ + 1 waits with its batch
/// while the others run layer ℓ). Its sparse generation equals the in-memory model's under the same rule.</summary>
public sealed class OffloadedSparsityTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Learned predictors with lookahead (untrained ones of the default ranks: a fixed function of the layer inputs) and
    /// the oracle, MLP neurons and heads at half, over one GPU batch of two rows and two batches of one row, weights and cache in
    /// host memory or on the compute device, with the full cache or H2O's (a budget of 6 entries): the tokens and every step's
    /// logits of the in-memory sparse model under the same cache.</summary>
    [Theory]
    [InlineData("w=0/100/0,kv=0/100/0,act=0/100/0,gbs=1,ngb=2", SelectionRule.Predicted, null)]
    [InlineData("w=0/100/0,kv=0/100/0,act=0/100/0,gbs=2,ngb=1", SelectionRule.Predicted, null)]
    [InlineData("w=100/0/0,kv=100/0/0,act=100/0/0,gbs=1,ngb=2", SelectionRule.Oracle, null)]
    [InlineData("w=0/100/0,kv=0/100/0,act=0/100/0,gbs=1,ngb=2", SelectionRule.Predicted, "h2o")]
    public void AnOffloadedModelGeneratesAsTheInMemorySparseModel(string policy, SelectionRule rule, string? kvPolicy)
    {
        var options = new SparsityOptions { Rule = rule, MlpActive = 0.5, HeadsActive = 0.5 };
        var generation = new GenerationOptions
        {
            MaxNewTokens = 6, IgnoreEos = true, OutputLogits = true,
            Cache = kvPolicy is null ? null : OffloadParityContract.KvConfig(kvPolicy, "6", 16, 1),
        };
        using var model = DejaVuSparsityTests.Load("opt-prenorm");
        using var inMemory = DejaVuSparsity.ForTiming(model, options);
        model.Sparsity = inMemory;
        var expected = new Generator(model).GenerateTokens(DejaVuSparsityTests.Prompts, generation, Ct);
        model.Sparsity = null;
        var dense = new Generator(model).GenerateTokens(DejaVuSparsityTests.Prompts, generation, Ct);
        Assert.False(dense.Logits![2].allclose(expected.Logits![2], rtol: 1e-4, atol: 1e-4), "half the neurons and heads is not the dense step");

        using var offloaded = OffloadedModel.Load(Fixtures.ModelDir("opt-prenorm"), new ModelLoadOptions { Device = DeviceKind.Cpu, DType = ModelDType.Float32 },
            new OffloadOptions { Policy = OffloadPolicy.Parse(policy) });
        using var sparse = DejaVuSparsity.ForTiming(offloaded, options);
        offloaded.Sparsity = sparse;
        var actual = new Generator(offloaded).GenerateTokens(DejaVuSparsityTests.Prompts, generation, Ct);
        Assert.Equal(expected.Sequences.Select(s => s.Tokens), actual.Sequences.Select(s => s.Tokens));
        for (int i = 0; i < expected.Logits!.Count; i++)
            Assert.True(expected.Logits[i].allclose(actual.Logits![i], rtol: 1e-5, atol: 1e-5), $"step {i}: max |Δ| {(expected.Logits[i] - actual.Logits![i]).abs().max().item<float>()}");
    }
}
