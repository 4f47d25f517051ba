using System.Text.Json;
using System.Text.Json.Nodes;
using Tern.Models;
using Tern.Runtime;
using Tern.Training.InRank;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Training;

/// <summary>How token files store ids.</summary>
public enum TokenFileFormat
{
    /// <summary>Little-endian unsigned 16-bit ids (vocabularies up to 65,536).</summary>
    UInt16,
    /// <summary>Little-endian signed 32-bit ids.</summary>
    Int32,
}

/// <summary>Options of a training run (<see cref="Trainer"/>). Defaults suit a small model on one GPU.</summary>
public sealed record TrainerOptions
{
    /// <summary>Folder for checkpoints (<c>checkpoint-last</c>) and the final Hugging Face model.</summary>
    public required string OutputDirectory { get; init; }
    /// <summary>Binary token file to train on.</summary>
    public required string TrainTokens { get; init; }
    /// <summary>Binary token file for validation loss; none = no validation.</summary>
    public string? ValidTokens { get; init; }
    /// <summary>Format of both token files.</summary>
    public TokenFileFormat TokenFormat { get; init; } = TokenFileFormat.UInt16;
    /// <summary>Folder whose tokenizer files are copied into the output.</summary>
    public string? TokenizerDirectory { get; init; }

    /// <summary>Tokens per sequence.</summary>
    public int SequenceLength { get; init; } = 256;
    /// <summary>Sequences per micro-batch.</summary>
    public int BatchSize { get; init; } = 16;
    /// <summary>Micro-batches per optimizer step.</summary>
    public int GradientAccumulation { get; init; } = 1;
    /// <summary>Peak learning rate.</summary>
    public double LearningRate { get; init; } = 3e-4;
    /// <summary>Steps of linear warmup from 0 to the peak.</summary>
    public int WarmupSteps { get; init; } = 100;
    /// <summary>Optimizer steps of the run; the cosine decay ends here.</summary>
    public int TotalSteps { get; init; } = 1000;
    /// <summary>The learning rate at the end of the cosine, as a fraction of the peak.</summary>
    public double MinLearningRateRatio { get; init; } = 0.1;
    /// <summary>AdamW weight decay, applied to matrices and embeddings (not to norms and biases).</summary>
    public double WeightDecay { get; init; } = 0.1;
    /// <summary>Multiplies the learning rate of low-rank factors (<c>weight_a</c>, <c>weight_b</c> of a model with a
    /// <c>low_rank</c> section, InRank's or a fixed rank's) against every other parameter's, as LoRA+ gives its factors a rate of
    /// their own; 1 = one rate for all.</summary>
    public double FactorLearningRateScale { get; init; } = 1.0;
    /// <summary>AdamW weight decay of low-rank factors; null = <see cref="WeightDecay"/>. Decay on both factors of B·A penalises
    /// |B|² + |A|², which bounds the nuclear norm of the product, not its Frobenius norm as decay on a dense weight does.</summary>
    public double? FactorWeightDecay { get; init; }
    /// <summary>AdamW β1.</summary>
    public double Beta1 { get; init; } = 0.9;
    /// <summary>AdamW β2.</summary>
    public double Beta2 { get; init; } = 0.95;
    /// <summary>AdamW ε.</summary>
    public double Epsilon { get; init; } = 1e-8;
    /// <summary>Largest global gradient norm; 0 = no clipping.</summary>
    public double GradientClip { get; init; } = 1.0;
    /// <summary>Validation every this many steps (and at the end); 0 = only at the end.</summary>
    public int EvalEvery { get; init; } = 100;
    /// <summary>Micro-batches of validation.</summary>
    public int EvalBatches { get; init; } = 8;
    /// <summary>Checkpoint every this many steps (and at the end); 0 = only at the end.</summary>
    public int CheckpointEvery { get; init; } = 500;
    /// <summary>Seeds the initial weights and the data sampler.</summary>
    public long Seed { get; init; } = 1234;
    /// <summary>When set, every training and validation window starts with this token id (e.g. the model's
    /// <c>bos_token_id</c>): a fixed first token on which the model can form an attention sink (StreamingLLM §3.3).</summary>
    public int? StartToken { get; init; }
    /// <summary>Where to compute.</summary>
    public DeviceKind Device { get; init; } = DeviceKind.Auto;
    /// <summary>Type of the trained weights (fp32 recommended: AdamW state is kept in it).</summary>
    public ModelDType DType { get; init; } = ModelDType.Float32;
    /// <summary>Mixed precision: matrix products in this type (<see cref="Runtime.Autocast"/>) while weights, optimizer state,
    /// norms and the loss stay fp32. Only bf16: fp16 would need loss scaling. Null = off.</summary>
    public ModelDType? Autocast { get; init; }

    /// <summary>InRank: the MLP linears trained as growing low-rank products, then at the discovered fixed rank (or at
    /// <see cref="InRankOptions.FixedRank"/> throughout); null = dense. Llama-family and GPT-2 models.</summary>
    public InRankOptions? InRank { get; init; }

    /// <summary>Which parameters train, by <see cref="ModelParameter.Name"/>; null = all. The others stay frozen.</summary>
    public Func<string, bool>? TrainParameter { get; init; }
    /// <summary>Extra loss terms added to the cross-entropy of each micro-batch: (model, input ids [B,T], logits [B,T,V]) → scalar.</summary>
    public Func<CausalLanguageModel, Tensor, Tensor, Tensor>? ExtraLoss { get; init; }

    /// <summary>Test seam: called with each file's path while a checkpoint is being written (throw to simulate a crash).</summary>
    internal Action<string>? OnCheckpointFile { get; init; }

    /// <summary>The file, in a run's output folder, that records its options (<see cref="ToJson"/>).</summary>
    public const string RunConfigFile = "train-config.json";

    /// <summary>The options of the run as JSON (snake_case keys; the seams and the output folder are not part of it).</summary>
    public JsonObject ToJson() => new()
    {
        ["train_tokens"] = TrainTokens, ["valid_tokens"] = ValidTokens, ["tokenizer"] = TokenizerDirectory,
        ["token_format"] = TokenFormat.ToString(), ["sequence_length"] = SequenceLength, ["batch_size"] = BatchSize,
        ["gradient_accumulation"] = GradientAccumulation, ["learning_rate"] = LearningRate, ["warmup_steps"] = WarmupSteps,
        ["total_steps"] = TotalSteps, ["min_lr_ratio"] = MinLearningRateRatio, ["weight_decay"] = WeightDecay, ["factor_lr_scale"] = FactorLearningRateScale == 1 ? null : FactorLearningRateScale,
        ["factor_weight_decay"] = FactorWeightDecay, ["beta1"] = Beta1,
        ["beta2"] = Beta2, ["eps"] = Epsilon, ["grad_clip"] = GradientClip, ["eval_every"] = EvalEvery, ["eval_batches"] = EvalBatches,
        ["checkpoint_every"] = CheckpointEvery, ["seed"] = Seed, ["start_token"] = StartToken, ["dtype"] = DType.ToString(), ["autocast"] = Autocast?.ToString(),
        ["inrank"] = InRank?.ToJson(),
    };

    /// <summary>Options read from a run-config JSON file (the keys of <see cref="ToJson"/>, any subset); keys it lacks keep
    /// <paramref name="baseline"/>'s values. Unknown keys and wrong types are errors naming the file and key.</summary>
    public static TrainerOptions Load(string path, TrainerOptions baseline)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"run config '{Path.GetFullPath(path)}' does not exist.", path);
        JsonObject json;
        try { json = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new JsonException("not a JSON object"); }
        catch (JsonException e) { throw new ArgumentException($"{path}: not a valid run config ({e.Message})."); }
        var o = baseline;
        foreach (var (key, value) in json)
        {
            T Get<T>()
            {
                try { return value is null ? default! : value.GetValue<T>(); }
                catch (Exception e) when (e is FormatException or InvalidOperationException)
                { throw new ArgumentException($"{path}: \"{key}\" must be a {typeof(T).Name} (got {value?.ToJsonString()})."); }
            }
            TEnum Enum<TEnum>() where TEnum : struct, Enum => System.Enum.TryParse<TEnum>(Get<string>(), true, out var v) ? v
                : throw new ArgumentException($"{path}: \"{key}\" must be one of {string.Join(", ", System.Enum.GetNames<TEnum>())}.");
            o = key switch
            {
                "train_tokens" => o with { TrainTokens = Get<string>() }, "valid_tokens" => o with { ValidTokens = Get<string?>() },
                "tokenizer" => o with { TokenizerDirectory = Get<string?>() }, "token_format" => o with { TokenFormat = Enum<TokenFileFormat>() },
                "sequence_length" => o with { SequenceLength = Get<int>() }, "batch_size" => o with { BatchSize = Get<int>() },
                "gradient_accumulation" => o with { GradientAccumulation = Get<int>() }, "learning_rate" => o with { LearningRate = Get<double>() },
                "warmup_steps" => o with { WarmupSteps = Get<int>() }, "total_steps" => o with { TotalSteps = Get<int>() },
                "min_lr_ratio" => o with { MinLearningRateRatio = Get<double>() }, "weight_decay" => o with { WeightDecay = Get<double>() },
                "factor_lr_scale" => o with { FactorLearningRateScale = Get<double?>() ?? 1 }, // null: one rate, as in runs from before the option
                "factor_weight_decay" => o with { FactorWeightDecay = Get<double?>() },
                "beta1" => o with { Beta1 = Get<double>() }, "beta2" => o with { Beta2 = Get<double>() }, "eps" => o with { Epsilon = Get<double>() },
                "grad_clip" => o with { GradientClip = Get<double>() }, "eval_every" => o with { EvalEvery = Get<int>() },
                "eval_batches" => o with { EvalBatches = Get<int>() }, "checkpoint_every" => o with { CheckpointEvery = Get<int>() },
                "seed" => o with { Seed = Get<long>() }, "start_token" => o with { StartToken = Get<int?>() }, "dtype" => o with { DType = Enum<ModelDType>() },
                "autocast" => o with { Autocast = value is null ? null : Enum<ModelDType>() },
                "inrank" => o with { InRank = value is null ? null : InRankOptions.FromJson(value, path) },
                _ => throw new ArgumentException($"{path}: unknown key \"{key}\" (known: {string.Join(", ", baseline.ToJson().Select(kv => kv.Key))})."),
            };
        }
        return o;
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid option.</summary>
    public void Validate()
    {
        static void Positive(string name, double v) { if (!(v > 0)) throw new ArgumentException($"{name} must be positive (got {v})."); }
        static void NonNegative(string name, double v) { if (!(v >= 0)) throw new ArgumentException($"{name} must not be negative (got {v})."); }
        Positive(nameof(SequenceLength), SequenceLength); Positive(nameof(BatchSize), BatchSize);
        Positive(nameof(GradientAccumulation), GradientAccumulation); Positive(nameof(LearningRate), LearningRate);
        Positive(nameof(TotalSteps), TotalSteps); NonNegative(nameof(WarmupSteps), WarmupSteps);
        NonNegative(nameof(WeightDecay), WeightDecay); NonNegative(nameof(GradientClip), GradientClip);
        Positive(nameof(FactorLearningRateScale), FactorLearningRateScale);
        if (FactorWeightDecay is { } factorDecay) NonNegative(nameof(FactorWeightDecay), factorDecay);
        NonNegative(nameof(EvalEvery), EvalEvery); NonNegative(nameof(EvalBatches), EvalBatches); NonNegative(nameof(CheckpointEvery), CheckpointEvery);
        if (MinLearningRateRatio is < 0 or > 1) throw new ArgumentException($"{nameof(MinLearningRateRatio)} must be in [0, 1] (got {MinLearningRateRatio}).");
        if (Beta1 is < 0 or >= 1 || Beta2 is < 0 or >= 1) throw new ArgumentException("betas must be in [0, 1).");
        if (Autocast is { } amp && amp != ModelDType.BFloat16)
            throw new ArgumentException($"{nameof(Autocast)} must be bf16 (got {amp.ShortName()}): fp16 would need loss scaling, which Tern does not do.");
        InRank?.Validate();
        if (Autocast is not null && DType != ModelDType.Float32)
            throw new ArgumentException($"{nameof(Autocast)} keeps fp32 master weights: train with {nameof(DType)} fp32 (got {DType.ShortName()}).");
    }
}

/// <summary>Linear warmup to the peak, then cosine decay to <c>peak · minRatio</c> at the last step.</summary>
public static class LearningRateSchedule
{
    /// <summary>The learning rate of optimizer step <paramref name="step"/> (0-based).</summary>
    public static double At(int step, double peak, int warmupSteps, int totalSteps, double minRatio)
    {
        if (step < warmupSteps) return peak * (step + 1) / warmupSteps; // never 0: step 0 already learns
        int decaySteps = Math.Max(1, totalSteps - warmupSteps - 1);
        double progress = Math.Clamp((double)(step - warmupSteps) / decaySteps, 0, 1);
        double cosine = 0.5 * (1 + Math.Cos(Math.PI * progress));
        return peak * (minRatio + (1 - minRatio) * cosine);
    }

    /// <summary><see cref="At(int, double, int, int, double)"/> with a run's options.</summary>
    public static double At(int step, TrainerOptions o) => At(step, o.LearningRate, o.WarmupSteps, o.TotalSteps, o.MinLearningRateRatio);
}
