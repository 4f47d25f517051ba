using Tern.Checkpoints;
using Tern.Sparsity;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Sparsity;

public class PredictorTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    const int Hidden = 16, Neurons = 32, Heads = 4, Tokens = 2048;

    static ModelIdentity Identity(int layers, int hidden = Hidden) => new()
    {
        ModelType = "opt", HiddenSize = hidden, Layers = layers, IntermediateSize = Neurons, Heads = Heads, Activation = "relu",
    };

    /// <summary>Synthetic activations: layer ℓ's inputs are independent noise; its MLP labels are a linear threshold of layer
    /// ℓ−1's inputs (layer 0: its own), its head norms a linear map of them — learnable with lookahead only.</summary>
    static ActivationData Lookahead(int layers)
    {
        var g = new torch.Generator(7);
        var inputs = Enumerable.Range(0, layers).Select(_ => torch.randn(Tokens, Hidden, generator: g)).ToArray();
        var data = new LayerActivations[layers];
        for (int l = 0; l < layers; l++)
        {
            var source = inputs[Math.Max(l - 1, 0)];
            // Thresholds above zero make most neurons off, as in a ReLU MLP.
            var active = source.matmul(torch.randn(Hidden, Neurons, generator: g)).gt(2.0);
            var norms = source.matmul(torch.randn(Hidden, Heads, generator: g)).exp(); // monotone in a linear score: rankable
            data[l] = new LayerActivations(inputs[l], active, norms);
        }
        return new ActivationData(new ActivationManifest { Model = Identity(layers), Tokens = Tokens, SequenceLength = 64, Mlp = true }, data);
    }

    [Fact]
    public void LookaheadPairsLayerWithThePreviousLayersInput()
    {
        Assert.Equal(0, PredictorTrainer.SourceLayer(0, lookahead: true));
        Assert.Equal(2, PredictorTrainer.SourceLayer(3, lookahead: true));
        Assert.Equal(3, PredictorTrainer.SourceLayer(3, lookahead: false));

        using var data = Lookahead(3);
        var options = new PredictorTrainingOptions { Epochs = 15, BatchSize = 256, LearningRate = 1e-2, HeadLearningRate = 1e-2, StopRecall = 1.1 };
        using var ahead = PredictorTrainer.Train(data, options, cancellation: Ct);
        using var same = PredictorTrainer.Train(data, options with { Lookahead = false }, cancellation: Ct);
        Assert.True(ahead.Manifest.Lookahead);
        Assert.Equal(new[] { 0, 0, 1 }, ahead.Manifest.Layers.Select(l => l.Mlp!.SourceLayer));
        Assert.Equal(new[] { 0, 1, 2 }, same.Manifest.Layers.Select(l => l.Mlp!.SourceLayer));
        for (int l = 1; l < 3; l++)
        {
            var (a, s) = (ahead.Manifest.Layers[l], same.Manifest.Layers[l]);
            Assert.True(a.Mlp!.Recall > 0.9, $"layer {l}: lookahead recall {a.Mlp.Recall}");
            Assert.True(a.Mlp.Precision > s.Mlp!.Precision + 0.2, $"layer {l}: lookahead precision {a.Mlp.Precision} vs same-layer {s.Mlp.Precision}");
            Assert.True(a.Heads.RecallAtK > s.Heads.RecallAtK + 0.2, $"layer {l}: lookahead heads recall@K {a.Heads.RecallAtK} vs same-layer {s.Heads.RecallAtK}");
        }
    }

    [Fact]
    public void PredictorLearnsASeparableSparseTargetAndTheLossFalls()
    {
        using var scope = torch.NewDisposeScope();
        var g = new torch.Generator(3);
        var x = torch.randn(4096, Hidden, generator: g);
        var y = x.matmul(torch.randn(Hidden, 64, generator: g)).gt(2.5); // sparse; rank Hidden can express it
        var (predictor, stats) = PredictorTrainer.Fit(x, y, sourceLayer: 0, rank: Hidden, learningRate: 1e-2, extraWeight: 0.005, k: null,
            new PredictorTrainingOptions { Epochs = 20, BatchSize = 256, StopRecall = 1.1 }, seed: 1);
        using (predictor)
        {
            Assert.True(stats.TrainLoss[^1] < 0.8 * stats.TrainLoss[0], $"loss {stats.TrainLoss[0]} → {stats.TrainLoss[^1]}");
            Assert.True(stats.Recall > 0.95, $"recall {stats.Recall}");
            Assert.True(stats.RecallAtK > 0.8, $"recall@{stats.K} {stats.RecallAtK}");
            Assert.Equal(y.to(ScalarType.Float32).mean().item<float>() + 0.005, stats.LabelWeight, 0.01); // mean(label) + 0.005 over the 95% split
            Assert.Equal(new long[] { Hidden, Hidden }, predictor.A.shape);
            Assert.Equal(new long[] { Hidden, 64 }, predictor.B.shape);
        }
    }

    [Fact]
    public void TopHeadsLabelsTheLargestNorms()
    {
        using var scope = torch.NewDisposeScope();
        var norms = torch.tensor(new float[] { 1, 5, 3, 2, 9, 0, 0, 1 }, new long[] { 2, 4 });
        var labels = PredictorTrainer.TopHeads(norms, 0.3); // ⌈0.3·4⌉ = 2
        Assert.Equal(new float[] { 0, 1, 1, 0, 1, 0, 0, 1 }, labels.data<float>().ToArray());
    }

    static SparsityPredictors Trained(int layers)
    {
        using var data = Lookahead(layers);
        return PredictorTrainer.Train(data, new PredictorTrainingOptions { Epochs = 2, BatchSize = 512, MlpRank = 5, HeadRank = 3 });
    }

    static string ModelFolder(TempDir dir, int hidden = Hidden)
    {
        File.WriteAllText(dir.File("config.json"), $$"""
            {"model_type": "opt", "hidden_size": {{hidden}}, "num_hidden_layers": 2, "ffn_dim": {{Neurons}}, "num_attention_heads": {{Heads}},
             "activation_function": "relu", "vocab_size": 64, "max_position_embeddings": 64}
            """);
        return dir.Path;
    }

    [Fact]
    public void SaveAndLoadRoundTripNextToTheModel()
    {
        using var dir = new TempDir();
        string folder = ModelFolder(dir);
        using var trained = Trained(2);
        trained.Save(folder);
        Assert.True(File.Exists(Path.Combine(folder, "sparsity", "predictors.safetensors")));
        Assert.True(File.Exists(Path.Combine(folder, "sparsity", "predictors.json")));
        using var loaded = SparsityPredictors.Load(folder, ModelIdentity.Of(HfConfig.Load(folder)));
        Assert.Equal(trained.Manifest.Model, loaded.Manifest.Model);
        Assert.Equal(5, loaded.Manifest.MlpRank);
        Assert.Equal(3, loaded.Manifest.HeadRank);
        for (int l = 0; l < 2; l++)
        {
            Assert.True(loaded.Layers[l].Mlp!.A.Equals(trained.Layers[l].Mlp!.A));
            Assert.True(loaded.Layers[l].Mlp!.B.Equals(trained.Layers[l].Mlp!.B));
            Assert.True(loaded.Layers[l].Heads.B.Equals(trained.Layers[l].Heads.B));
            Assert.Equal(trained.Manifest.Layers[l].Mlp!.Recall, loaded.Manifest.Layers[l].Mlp!.Recall);
            Assert.Equal(trained.Manifest.Layers[l].Heads.TrainLoss, loaded.Manifest.Layers[l].Heads.TrainLoss);
        }
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(3, Hidden);
        Assert.True(loaded.Layers[1].Mlp!.Logits(x).Equals(trained.Layers[1].Mlp!.Logits(x)));
    }

    [Fact]
    public void PredictorsOfAnotherModelAreRefusedNamingTheField()
    {
        using var dir = new TempDir();
        using (var trained = Trained(2)) trained.Save(ModelFolder(dir));
        using var wider = new TempDir();
        Directory.CreateDirectory(Path.Combine(wider.Path, "sparsity"));
        foreach (var f in new[] { "predictors.safetensors", "predictors.json" })
            File.Copy(Path.Combine(dir.Path, "sparsity", f), Path.Combine(wider.Path, "sparsity", f));
        string folder = ModelFolder(wider, hidden: 24);
        var e = Assert.Throws<SparsityException>(() => SparsityPredictors.Load(folder, ModelIdentity.Of(HfConfig.Load(folder))));
        Assert.Contains("hidden_size 16", e.Message);
        Assert.Contains("hidden_size 24", e.Message);
        Assert.Contains("re-train", e.Message);
        var layers = Assert.Throws<SparsityException>(() => SparsityPredictors.Load(dir.Path, Identity(3)));
        Assert.Contains("num_hidden_layers", layers.Message);
    }
}
