using Tern.Models;
using Tern.Sparsity;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Tests.Sparsity;

public class ActivationCollectorTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static Tensor Ids(long vocab, int b, int t, int seed) => torch.randint(0, vocab, new long[] { b, t }, generator: new torch.Generator((ulong)seed));

    /// <summary>Recomputes each layer densely in the test from the recorded input and head outputs: the result must be the
    /// model's own next-layer input (the last layer's: its logits), so the recorded head outputs and MLP input are the model's;
    /// the recorded firing mask must be where the dense ReLU is non-zero.</summary>
    [Theory]
    [InlineData("llama-linear-relu-f16")]
    [InlineData("opt-prenorm")]
    public void FiringMasksEqualDenseRecomputation(string fixture)
    {
        using var model = HfParityContract.LoadFixture(fixture);
        using var scope = torch.NewDisposeScope();
        bool opt = model.Info.ModelType == "opt";
        using var pass = ActivationCollector.Record(model, Ids(model.Info.VocabSize, 2, 12, 5), mlp: true);
        var layers = pass.Layers;
        for (int l = 0; l < layers.Count; l++)
        {
            var w = model.Parts[l + 1];
            var c = layers[l];
            var heads = c.HeadOutputs.reshape(2, 12, -1);
            var h = c.Input + F.linear(heads, w[opt ? "self_attn.out_proj.weight" : "self_attn.o_proj.weight"], w.Optional("self_attn.out_proj.bias"));
            Tensor pre, mlpOut;
            if (opt)
            {
                var m = F.layer_norm(h, new long[] { h.shape[^1] }, w["final_layer_norm.weight"], w["final_layer_norm.bias"], 1e-5);
                pre = F.linear(m, w["fc1.weight"], w["fc1.bias"]);
                mlpOut = F.linear(F.relu(pre), w["fc2.weight"], w["fc2.bias"]);
            }
            else
            {
                var m = h * (h.square().mean(new long[] { -1 }, keepdim: true) + 1e-6).rsqrt() * w["post_attention_layernorm.weight"];
                var gateUp = F.linear(m, w["mlp.gate_up_proj.weight"]);
                long n = gateUp.shape[^1] / 2;
                pre = gateUp.narrow(-1, 0, n);
                mlpOut = F.linear(F.relu(pre) * gateUp.narrow(-1, n, n), w["mlp.down_proj.weight"]);
            }
            var next = l + 1 < layers.Count ? layers[l + 1].Input : Head(model, h + mlpOut);
            var actual = l + 1 < layers.Count ? h + mlpOut : pass.Logits;
            Assert.True(actual.allclose(next, rtol: 1e-4, atol: 1e-4), $"layer {l}: dense recomputation differs from the model's output");
            Assert.True(c.MlpActive!.Equals(pre.gt(0)), $"layer {l}: firing mask differs from relu > 0");
            Assert.True(c.MlpInput!.allclose(h, rtol: 1e-5, atol: 1e-5), $"layer {l}: the MLP block's input is the residual after attention");
            var fraction = c.MlpActive!.to(ScalarType.Float32).mean().item<float>();
            Assert.InRange(fraction, 0.01, 0.99); // a mask that is all on or all off would test nothing
        }
    }

    /// <summary>The logits of the last layer's output (final norm, tied or own LM head), as the fixtures' heads compute them.</summary>
    static Tensor Head(Tern.Models.CausalLanguageModel model, Tensor h)
    {
        var w = model.Parts[^1];
        if (model.Info.ModelType == "opt")
            return F.linear(F.layer_norm(h, new long[] { h.shape[^1] }, w["model.decoder.final_layer_norm.weight"], w["model.decoder.final_layer_norm.bias"], 1e-5), w["lm_head.weight"]);
        return F.linear(h * (h.square().mean(new long[] { -1 }, keepdim: true) + 1e-6).rsqrt() * w["model.norm.weight"], w["lm_head.weight"]);
    }

    [Fact]
    public void CollectKeepsTheFirstMaxTokensOfTheCorpusInEveryLayer()
    {
        using var model = HfParityContract.LoadFixture("opt-prenorm");
        var tokens = Enumerable.Range(0, 100).Select(i => (i * 37 + 11) % model.Info.VocabSize).ToArray();
        using var data = ActivationCollector.Collect(model, tokens, new CollectOptions { MaxTokens = 40, SequenceLength = 16, BatchSize = 2 }, cancellation: Ct);
        Assert.Equal(40, data.Manifest.Tokens);
        using var scope = torch.NewDisposeScope();
        var ids = torch.tensor(tokens.Take(48).Select(x => (long)x).ToArray(), new long[] { 3, 16 });
        using var pass = ActivationCollector.Record(model, ids, mlp: true);
        var layers = pass.Layers;
        for (int l = 0; l < layers.Count; l++)
        {
            var d = data.Layers[l];
            Assert.Equal(new long[] { 40, 32 }, d.Inputs.shape);
            Assert.Equal(new long[] { 40, 64 }, d.MlpActive!.shape);
            Assert.Equal(new long[] { 40, 4 }, d.HeadNorms.shape);
            Assert.True(d.MlpInputs!.to(ScalarType.Float32).allclose(layers[l].MlpInput!.flatten(0, 1).narrow(0, 0, 40), rtol: 1e-2, atol: 1e-2)); // bf16
            var expected = layers[l].Input.flatten(0, 1).narrow(0, 0, 40);
            Assert.True(d.Inputs.to(ScalarType.Float32).allclose(expected, rtol: 1e-2, atol: 1e-2)); // stored in bf16
            Assert.True(d.MlpActive!.Equals(layers[l].MlpActive!.flatten(0, 1).narrow(0, 0, 40)));
            Assert.True(d.HeadNorms.allclose(layers[l].HeadOutputs.norm(-1).flatten(0, 1).narrow(0, 0, 40), rtol: 1e-5, atol: 1e-6));
        }
    }

    [Fact]
    public void SwiGluMlpIsRefusedWithAClearMessageAndHeadsStillCollect()
    {
        using var model = HfParityContract.LoadFixture("llama-gqa");
        var tokens = Enumerable.Range(0, 64).Select(i => i % model.Info.VocabSize).ToArray();
        var e = Assert.Throws<SparsityException>(() => ActivationCollector.Collect(model, tokens, new CollectOptions { SequenceLength = 16 }, cancellation: Ct));
        Assert.Contains("'silu'", e.Message);
        Assert.Contains("ReLU", e.Message);
        Assert.Contains("--heads-only", e.Message);

        using var data = ActivationCollector.Collect(model, tokens, new CollectOptions { SequenceLength = 16, Mlp = false }, cancellation: Ct);
        Assert.False(data.Manifest.Mlp);
        Assert.All(data.Layers, l => Assert.Null(l.MlpActive));
        using var dir = new TempDir();
        data.Save(dir.Path);
        using var loaded = ActivationData.Load(dir.Path);
        Assert.Equal(data.Manifest, loaded.Manifest);
        Assert.True(loaded.Layers[1].HeadNorms.Equals(data.Layers[1].HeadNorms));
        // Training neuron predictors on heads-only data of a SwiGLU model names the reason.
        var t = Assert.Throws<SparsityException>(() => PredictorTrainer.Train(loaded, new PredictorTrainingOptions { Epochs = 1 }, cancellation: Ct));
        Assert.Contains("'silu'", t.Message);
    }
}
