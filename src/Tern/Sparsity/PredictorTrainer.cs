using System.Text.Json.Serialization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Sparsity;

/// <summary>How the predictors are trained (defaults: DejaVu's released scripts, except where noted).</summary>
public sealed record PredictorTrainingOptions
{
    /// <summary>Rank of the MLP predictors; null: the paper's 1000 at width 12288 scaled to the model (h·1000/12288, rounded up to a multiple of 8), at least 64.</summary>
    public int? MlpRank { get; init; }
    /// <summary>Rank of the head predictors; null: the paper's 512 at width 12288 scaled (h·512/12288, rounded up to a multiple of 8), at least 16; never above the heads.</summary>
    public int? HeadRank { get; init; }
    /// <summary>Layer ℓ's predictors read layer ℓ−1's input (layer 0 reads its own: the embedding output). The released MLP
    /// training pairs the same layer, which the asynchronous system cannot use; we train what inference will run.</summary>
    public bool Lookahead { get; init; } = true;
    /// <summary>The MLP predictors read the residual stream entering the MLP block (after attention, before the norm) instead of
    /// the layer's input: what DejaVu's released MLP training reads (its input is nearer the neurons' own). With
    /// <see cref="Lookahead"/> layer ℓ's MLP input predicts ℓ + 1 (the latency system's side stream), without it ℓ itself.</summary>
    public bool MlpReadsMlpInput { get; init; }
    /// <summary>Train MLP neuron predictors (when the data has masks).</summary>
    public bool Mlp { get; init; } = true;
    /// <summary>Fraction k of heads labelled active per token: the top ⌈k·heads⌉ by output norm (run_c4_att.sh: 0.3).</summary>
    public double HeadFraction { get; init; } = 0.3;
    /// <summary>At most this many passes over the training split.</summary>
    public int Epochs { get; init; } = 20;
    /// <summary>Stop after this many epochs without a better validation recall.</summary>
    public int Patience { get; init; } = 5;
    /// <summary>Stop once validation recall passes this.</summary>
    public double StopRecall { get; init; } = 0.99;
    /// <summary>Token rows per step.</summary>
    public int BatchSize { get; init; } = 1024;
    /// <summary>AdamW learning rate of the MLP predictors.</summary>
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>AdamW learning rate of the head predictors (the attention script's 1e-4 assumes 400k tokens; with few tokens 1e-3 learns).</summary>
    public double HeadLearningRate { get; init; } = 1e-3;
    /// <summary>AdamW weight decay.</summary>
    public double WeightDecay { get; init; } = 0.01;
    /// <summary>Held-out share of the tokens for the reported metrics.</summary>
    public double ValidationFraction { get; init; } = 0.05;
    /// <summary>Seeds the split, initialisation and shuffling.</summary>
    public long Seed { get; init; }
    /// <summary>Where to train (CPU when null).</summary>
    public Device? Device { get; init; }
}

/// <summary>One predictor's training result, measured on the held-out split.</summary>
public sealed record PredictorStats
{
    /// <summary>Layer whose input the predictor reads.</summary>
    [JsonPropertyName("source_layer")] public required int SourceLayer { get; init; }
    /// <summary>Low-rank r.</summary>
    [JsonPropertyName("rank")] public required int Rank { get; init; }
    /// <summary>Epochs run.</summary>
    [JsonPropertyName("epochs")] public required int Epochs { get; init; }
    /// <summary>Mean weighted BCE per epoch on the training split.</summary>
    [JsonPropertyName("train_loss")] public required double[] TrainLoss { get; init; }
    /// <summary>The class weight w = mean(label) (+0.005 for MLP): positives weigh 1 − w, negatives w.</summary>
    [JsonPropertyName("label_weight")] public required double LabelWeight { get; init; }
    /// <summary>Truly active units found at sigmoid ≥ 0.5.</summary>
    [JsonPropertyName("recall")] public required double Recall { get; init; }
    /// <summary>Units predicted at sigmoid ≥ 0.5 that are truly active.</summary>
    [JsonPropertyName("precision")] public required double Precision { get; init; }
    /// <summary>K of <see cref="RecallAtK"/>: the training split's mean active count, rounded up (heads: ⌈k·heads⌉).</summary>
    [JsonPropertyName("k")] public required int K { get; init; }
    /// <summary>Truly active units among the top-K logits (inference selects by top-K, not by the 0.5 threshold).</summary>
    [JsonPropertyName("recall_at_k")] public required double RecallAtK { get; init; }
    /// <summary>Mean truly active units per token.</summary>
    [JsonPropertyName("true_active")] public required double TrueActive { get; init; }
    /// <summary>Mean units predicted active (sigmoid ≥ 0.5) per token.</summary>
    [JsonPropertyName("predicted_active")] public required double PredictedActive { get; init; }
}

/// <summary>
/// DejaVu's predictor training (Liu et al. 2023, §4.1 and the released <c>train_mlp.py</c>/<c>train_att.py</c>): per layer, a
/// <see cref="LowRankPredictor"/> fitted with AdamW on weighted binary cross-entropy, class weight w = mean(y) (+0.005 for MLP
/// neurons), loss −[(1−w)·y·log σ(z) + w·(1−y)·log(1−σ(z))] — most units are off, so positives weigh more; early stop on
/// validation recall. Inputs and labels are paired by lookahead (<see cref="SourceLayer"/>).
/// </summary>
public static class PredictorTrainer
{
    /// <summary>The layer whose input trains layer <paramref name="layer"/>'s predictors: ℓ−1 with lookahead (layer 0: itself, the
    /// embedding output, which is ready before layer 0 runs), ℓ without.</summary>
    public static int SourceLayer(int layer, bool lookahead) => lookahead ? Math.Max(layer - 1, 0) : layer;

    /// <summary>The default ranks for a model (<see cref="PredictorTrainingOptions.MlpRank"/>, <see cref="PredictorTrainingOptions.HeadRank"/>).</summary>
    public static (int Mlp, int Heads) DefaultRanks(ModelIdentity model) => (
        Math.Min(Math.Max(64, MultipleOf8(model.HiddenSize * 1000.0 / 12288)), Math.Min(model.HiddenSize, model.IntermediateSize)),
        Math.Min(Math.Max(16, MultipleOf8(model.HiddenSize * 512.0 / 12288)), Math.Min(model.HiddenSize, model.Heads)));

    // Ranks rounded up to a multiple of 8: the one-row GEMV (16-byte loads) reads the second factor only then (OPT-30B: 583 → 584).
    static int MultipleOf8(double rank) => ((int)Math.Round(rank) + 7) / 8 * 8;

    /// <summary>Head labels: 1 for each token's top ⌈<paramref name="fraction"/>·heads⌉ heads by output norm, fp32 [N, heads].</summary>
    public static Tensor TopHeads(Tensor headNorms, double fraction)
    {
        if (fraction <= 0 || fraction > 1) throw new ArgumentException($"the head fraction must be in (0, 1] (found {fraction}).");
        int k = HeadCount(headNorms.size(1), fraction);
        using var scope = torch.NewDisposeScope();
        var top = headNorms.topk(k, 1).indexes;
        return torch.zeros_like(headNorms, ScalarType.Float32).scatter_(1, top, torch.ones(top.shape, ScalarType.Float32)).MoveToOuterDisposeScope();
    }

    static int HeadCount(long heads, double fraction) => (int)Math.Ceiling(fraction * heads - 1e-9);

    /// <summary>Trains every layer's predictors on <paramref name="data"/>; <paramref name="progress"/> gets (layer, what, stats).</summary>
    /// <remarks>On Linux with glibc this maps every malloc block of 64 KiB or more on its own for the rest of the process: the
    /// training's few-MB tensors otherwise pile up in a heap glibc never gives back (7.8 against 1.1 GB resident here).</remarks>
    public static SparsityPredictors Train(ActivationData data, PredictorTrainingOptions options,
        IProgress<(int Layer, string Kind, PredictorStats Stats)>? progress = null, CancellationToken cancellation = default)
    {
        Interop.NativeHeap.MapBlocksFrom();
        var model = data.Manifest.Model;
        bool mlp = options.Mlp && data.Manifest.Mlp;
        if (options.Mlp && !data.Manifest.Mlp) model.RequireReluMlp(); // explains why (non-ReLU) when it is the model
        var (defaultMlp, defaultHeads) = DefaultRanks(model);
        int mlpRank = options.MlpRank ?? defaultMlp, headRank = options.HeadRank ?? defaultHeads;
        if (mlpRank < 1 || headRank < 1) throw new ArgumentException($"ranks must be positive (MLP {mlpRank}, heads {headRank}).");
        if (mlp && options.MlpReadsMlpInput && data.Layers.Any(l => l.MlpInputs is null))
            throw new SparsityException("these activations hold no MLP-block inputs (collected by an older Tern); collect them again to train predictors that read them.");
        if (data.Manifest.Tokens < 2) throw new SparsityException($"{data.Manifest.Tokens} token(s) collected; training needs at least 2 (one held out).");
        var layers = new List<LayerPredictors>();
        try
        {
            for (int l = 0; l < model.Layers; l++)
            {
                cancellation.ThrowIfCancellationRequested();
                int source = SourceLayer(l, options.Lookahead);
                using var scope = torch.NewDisposeScope();
                var x = data.Layers[source].Inputs;
                LowRankPredictor? mlpPredictor = null;
                PredictorStats? mlpStats = null;
                if (mlp)
                {
                    var mlpX = options.MlpReadsMlpInput ? data.Layers[source].MlpInputs! : x;
                    (mlpPredictor, mlpStats) = Fit(mlpX, data.Layers[l].MlpActive!, source, mlpRank, options.LearningRate, 0.005, null, options, seed: 2 * l);
                    progress?.Report((l, "mlp", mlpStats));
                }
                var headLabels = TopHeads(data.Layers[l].HeadNorms, options.HeadFraction);
                var (heads, headStats) = Fit(x, headLabels, source, headRank, options.HeadLearningRate, 0, HeadCount(model.Heads, options.HeadFraction), options, seed: 2 * l + 1);
                progress?.Report((l, "heads", headStats));
                layers.Add(new LayerPredictors(mlpPredictor, mlpStats, heads, headStats));
            }
        }
        catch
        {
            foreach (var l in layers) l.Dispose();
            throw;
        }
        return new SparsityPredictors(new PredictorManifest
        {
            Model = model, Lookahead = options.Lookahead, Mlp = mlp, MlpReadsMlpInput = mlp && options.MlpReadsMlpInput, MlpRank = mlp ? mlpRank : null, HeadRank = headRank,
            HeadFraction = options.HeadFraction, Tokens = data.Manifest.Tokens,
        }, layers);
    }

    /// <summary>Fits one predictor of inputs <paramref name="inputs"/> [N,h] to 0/1 labels <paramref name="labels"/> [N,out].</summary>
    /// <param name="extraWeight">Added to the class weight w (0.005 for MLP neurons, as train_mlp.py).</param>
    /// <param name="k">K of recall@K; null: the mean active count of the training split, rounded up.</param>
    internal static (LowRankPredictor Predictor, PredictorStats Stats) Fit(Tensor inputs, Tensor labels, int sourceLayer, int rank,
        double learningRate, double extraWeight, int? k, PredictorTrainingOptions options, long seed)
    {
        var device = options.Device ?? torch.CPU;
        long n = inputs.size(0), hidden = inputs.size(1), outputs = labels.size(1);
        if (labels.size(0) != n) throw new ArgumentException($"{n} input rows but {labels.size(0)} label rows.");
        using var scope = torch.NewDisposeScope();
        var generator = new torch.Generator((ulong)(options.Seed * 1000 + seed));
        var x = inputs.to(ScalarType.Float32, device);
        var y = labels.to(ScalarType.Float32, device);
        var order = torch.randperm(n, generator: generator).to(device);
        long nValid = Math.Clamp((long)Math.Round(n * options.ValidationFraction), 1, n - 1);
        var (validIdx, trainIdx) = (order.narrow(0, 0, nValid), order.narrow(0, nValid, n - nValid));
        var (xTrain, yTrain, xValid, yValid) = (x.index_select(0, trainIdx), y.index_select(0, trainIdx), x.index_select(0, validIdx), y.index_select(0, validIdx));
        double w = Math.Clamp(yTrain.mean().item<float>() + extraWeight, 1e-6, 1 - 1e-6);
        int topK = Math.Clamp(k ?? (int)Math.Ceiling(yTrain.sum(1).mean().item<float>() - 1e-6), 1, (int)outputs);

        // nn.Linear's initialisation, U(−1/√fan_in, 1/√fan_in), for both maps.
        var a = new Parameter((torch.rand(hidden, rank, generator: generator) * 2 - 1).mul_(1 / Math.Sqrt(hidden)).to(device));
        var b = new Parameter((torch.rand(rank, outputs, generator: generator) * 2 - 1).mul_(1 / Math.Sqrt(rank)).to(device));
        using var optimizer = torch.optim.AdamW(new[] { a, b }, learningRate, weight_decay: options.WeightDecay);
        var losses = new List<double>();
        Evaluation best = default;
        Tensor? bestA = null, bestB = null;
        int sinceBest = 0;
        long trainRows = n - nValid;
        for (int epoch = 0; epoch < options.Epochs; epoch++)
        {
            using var epochScope = torch.NewDisposeScope();
            var shuffle = torch.randperm(trainRows, generator: generator).to(device);
            double lossSum = 0;
            for (long start = 0; start < trainRows; start += options.BatchSize)
            {
                using var stepScope = torch.NewDisposeScope();
                var idx = shuffle.narrow(0, start, Math.Min(options.BatchSize, trainRows - start));
                var (xb, yb) = (xTrain.index_select(0, idx), yTrain.index_select(0, idx));
                optimizer.zero_grad();
                var loss = F.binary_cross_entropy_with_logits(xb.matmul(a).matmul(b), yb, weight: yb * (1 - w) + (1 - yb) * w);
                loss.backward();
                optimizer.step();
                lossSum += loss.item<float>() * idx.size(0);
            }
            losses.Add(lossSum / trainRows);
            var e = Evaluate(xValid, yValid, a, b, topK);
            if (bestA is null || e.Recall > best.Recall)
            {
                (best, sinceBest) = (e, 0);
                bestA?.Dispose();
                bestB?.Dispose();
                using (torch.no_grad()) (bestA, bestB) = (a.detach().clone().DetachFromDisposeScope(), b.detach().clone().DetachFromDisposeScope());
            }
            else sinceBest++;
            if (best.Recall > options.StopRecall || sinceBest >= options.Patience) break;
        }
        if (bestA is null || bestB is null) throw new ArgumentException($"epochs must be positive (found {options.Epochs}).");
        var stats = new PredictorStats
        {
            SourceLayer = sourceLayer, Rank = rank, Epochs = losses.Count, TrainLoss = losses.ToArray(), LabelWeight = w,
            Recall = best.Recall, Precision = best.Precision, K = topK, RecallAtK = best.RecallAtK, TrueActive = best.TrueActive,
            PredictedActive = best.PredictedActive,
        };
        return (new LowRankPredictor(OnCpu(bestA), OnCpu(bestB)), stats);
    }

    /// <summary><paramref name="t"/> (outside any scope) on the CPU; a device copy replaces it.</summary>
    static Tensor OnCpu(Tensor t)
    {
        if (t.device_type == DeviceType.CPU) return t;
        var cpu = t.cpu().DetachFromDisposeScope();
        t.Dispose();
        return cpu;
    }

    record struct Evaluation(double Recall, double Precision, double RecallAtK, double TrueActive, double PredictedActive);

    static Evaluation Evaluate(Tensor x, Tensor y, Tensor a, Tensor b, int k)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var logits = x.matmul(a).matmul(b);
        var predicted = logits.ge(0).to(ScalarType.Float32); // sigmoid ≥ 0.5
        double positives = y.sum().item<float>(), chosen = predicted.sum().item<float>();
        double hits = (predicted * y).sum().item<float>();
        double topHits = y.gather(1, logits.topk(k, 1).indexes).sum().item<float>();
        long rows = x.size(0);
        return new Evaluation(positives > 0 ? hits / positives : 1, chosen > 0 ? hits / chosen : 1, positives > 0 ? topHits / positives : 1,
            positives / rows, chosen / rows);
    }
}
