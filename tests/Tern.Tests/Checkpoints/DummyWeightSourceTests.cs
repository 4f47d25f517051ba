using Tern.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Checkpoints;

public sealed class DummyWeightSourceTests
{
    [Fact]
    public void RandomWeightsAreReproduciblePerNameAndSeed()
    {
        using var source = DummyWeightSource.Create(new DummyWeightOptions { Seed = 5 });
        using var a1 = source.Load("model.layers.0.mlp.up_proj.weight", [64, 32], ScalarType.Float32, torch.CPU);
        using var a2 = source.Load("model.layers.0.mlp.up_proj.weight", [64, 32], ScalarType.Float32, torch.CPU);
        using var b = source.Load("model.layers.1.mlp.up_proj.weight", [64, 32], ScalarType.Float32, torch.CPU);
        using var other = DummyWeightSource.Create(new DummyWeightOptions { Seed = 6 });
        using var c = other.Load("model.layers.0.mlp.up_proj.weight", [64, 32], ScalarType.Float32, torch.CPU);
        Assert.True(a1.Equals(a2));
        Assert.False(a1.Equals(b));
        Assert.False(a1.Equals(c));
        Assert.Equal([64L, 32L], a1.shape);
    }

    [Fact]
    public void ChunkingDoesNotChangeTheValues()
    {
        using var whole = DummyWeightSource.Create(new DummyWeightOptions { Seed = 9 });
        using var chunked = DummyWeightSource.Create(new DummyWeightOptions { Seed = 9 });
        chunked.ChunkElements = 7;
        using var a = whole.Load("w.weight", [10, 11], ScalarType.Float32, torch.CPU);
        using var b = chunked.Load("w.weight", [10, 11], ScalarType.Float32, torch.CPU);
        Assert.True(a.Equals(b));
        Assert.Equal(a.NumberOfElements, a.unique().Item1.NumberOfElements); // no repeats: the counter hash mixes well
    }

    [Fact]
    public void RandomWeightsHaveTheRequestedStd()
    {
        using var source = DummyWeightSource.Create(new DummyWeightOptions { Std = 0.05 });
        using var w = source.Load("lm_head.weight", [256, 256], ScalarType.Float32, torch.CPU);
        double std = w.std().item<float>();
        double mean = w.mean().item<float>();
        Assert.InRange(std, 0.048, 0.052);
        Assert.InRange(mean, -0.002, 0.002);
        double withinOneStd = w.abs().le(0.05).to(ScalarType.Float32).mean().item<float>();
        Assert.InRange(withinOneStd, 0.67, 0.70); // 68.3% for a normal distribution
    }

    [Theory]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float32)]
    public void HonoursDtypeAndDevice(ScalarType dtype)
    {
        using var source = DummyWeightSource.Create();
        using var w = source.Load("model.embed_tokens.weight", [16, 8], dtype, torch.CPU);
        Assert.Equal(dtype, w.dtype);
        Assert.Equal(DeviceType.CPU, w.device_type);
        using var f = w.to(ScalarType.Float32);
        Assert.True(f.abs().max().item<float>() > 0);
    }

    [Theory]
    [InlineData("model.norm.weight")]
    [InlineData("model.layers.3.input_layernorm.weight")]
    [InlineData("model.layers.3.post_attention_layernorm.weight")]
    [InlineData("transformer.h.0.ln_1.weight")]
    [InlineData("transformer.ln_f.weight")]
    [InlineData("ln_f.weight")]
    [InlineData("model.decoder.layers.0.self_attn_layer_norm.weight")]
    [InlineData("gpt_neox.final_layer_norm.weight")]
    [InlineData("model.layers.0.self_attn.q_norm.weight")]
    public void NormWeightsAreOnes(string name)
    {
        Assert.True(DummyWeightSource.IsNormWeight(name));
        using var source = DummyWeightSource.Create();
        using var w = source.Load(name, [32], ScalarType.BFloat16, torch.CPU);
        using var ones = torch.ones(32, ScalarType.BFloat16);
        Assert.True(ones.Equals(w));
    }

    [Theory]
    [InlineData("model.layers.0.self_attn.q_proj.bias")]
    [InlineData("transformer.h.0.ln_1.bias")]
    [InlineData("model.decoder.final_layer_norm.bias")]
    public void BiasesAreZeros(string name)
    {
        using var source = DummyWeightSource.Create();
        using var b = source.Load(name, [32], ScalarType.Float32, torch.CPU);
        Assert.Equal(0f, b.abs().sum().item<float>());
    }

    [Theory]
    [InlineData("model.layers.0.mlp.down_proj.weight")]
    [InlineData("model.embed_tokens.weight")]
    [InlineData("transformer.wte.weight")]
    [InlineData("lm_head.weight")]
    public void OtherWeightsAreNotNorms(string name) => Assert.False(DummyWeightSource.IsNormWeight(name));

    [Fact]
    public void ConstantWeights()
    {
        using var source = DummyWeightSource.Create(new DummyWeightOptions { Kind = DummyWeightKind.Constant, ConstantValue = 0.25 });
        Assert.Contains("constant", source.Description);
        using var w = source.Load("model.layers.0.mlp.up_proj.weight", [4, 4], ScalarType.Float16, torch.CPU);
        using var expected = torch.full([4, 4], 0.25, ScalarType.Float16);
        Assert.True(expected.Equals(w));
        using var norm = source.Load("model.norm.weight", [4], ScalarType.Float16, torch.CPU);
        Assert.Equal(4f, norm.to(ScalarType.Float32).sum().item<float>());
    }

    [Fact]
    public void ContainsAnyNameAndRejectsBadOptions()
    {
        using var source = DummyWeightSource.Create();
        Assert.True(source.Contains("anything.at.all"));
        Assert.Contains("dummy", source.Description);
        Assert.Throws<ArgumentOutOfRangeException>(() => DummyWeightSource.Create(new DummyWeightOptions { Std = -1 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => DummyWeightSource.Create(new DummyWeightOptions { Std = double.NaN }));
        using var ints = source.Load("position_ids", [5], ScalarType.Int64, torch.CPU);
        Assert.Equal(0L, ints.sum().item<long>());
    }

    [Fact]
    public void WorksThroughTheInterface()
    {
        IWeightSource source = DummyWeightSource.Create();
        using (source)
        {
            using var t = source.Load("x.weight", [2, 3], ScalarType.Float32, torch.CPU);
            Assert.Equal([2L, 3L], t.shape);
        }
    }
}
