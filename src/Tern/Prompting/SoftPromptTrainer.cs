using System.Diagnostics;
using System.Globalization;
using Tern.Evaluation;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Prompting;

/// <summary>How <see cref="SoftPromptTrainer"/> trains (defaults: the released Compress-Then-Prompt script).</summary>
public sealed record SoftPromptTrainingOptions
{
    /// <summary>Prompt vectors n (the LLaMA-7B script: 100).</summary>
    public int Tokens { get; init; } = 100;
    /// <summary>AdamW peak learning rate.</summary>
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>AdamW weight decay.</summary>
    public double WeightDecay { get; init; } = 1e-5;
    /// <summary>Linear warm-up steps, then linear decay to 0 at <see cref="Steps"/>.</summary>
    public int WarmupSteps { get; init; } = 500;
    /// <summary>Optimizer steps.</summary>
    public int Steps { get; init; } = 30_000;
    /// <summary>Sequences per step.</summary>
    public int BatchSize { get; init; } = 2;
    /// <summary>Text tokens per sequence (the prompt comes on top; n + T must fit the model's positions).</summary>
    public int SequenceLength { get; init; } = 1024;
    /// <summary>Global gradient-norm clip.</summary>
    public double GradientClip { get; init; } = 1.0;
    /// <summary>Seed of the random training windows.</summary>
    public int Seed { get; init; } = 42;
    /// <summary>Validate (and keep the best prompt) every this many steps, and after the last; 0: only after the last.</summary>
    public int EvalEvery { get; init; } = 100;
    /// <summary>Validation tokens scored each time (the first of the validation text).</summary>
    public int EvalTokens { get; init; } = 16_384;

    internal void Validate(ModelInfo model)
    {
        if (Tokens < 1) throw new OptionException($"{TernOption.SoftPromptTokens} must be at least 1 (got {Tokens}).");
        if (Steps < 1 || BatchSize < 1 || SequenceLength < 2 || WarmupSteps < 0 || EvalEvery < 0 || EvalTokens < 2 || LearningRate <= 0)
            throw new ArgumentException("steps, batch size, learning rate and validation tokens must be positive, the sequence length at least 2, warm-up and eval-every non-negative.");
        if (Tokens + SequenceLength > model.MaxPositions)
            throw new OptionException($"{TernOption.SoftPromptTokens} {Tokens} plus a sequence of {SequenceLength} tokens passes the model's {model.MaxPositions} positions; shorten the sequences to {model.MaxPositions - Tokens} or the prompt.");
    }

    /// <summary>The released schedule: linear warm-up to the peak, linear decay to 0 at the last step (step 0 already learns).</summary>
    public double LearningRateAt(int step) => step < WarmupSteps
        ? LearningRate * (step + 1) / WarmupSteps
        : LearningRate * Math.Max(0, (double)(Steps - step) / Math.Max(1, Steps - WarmupSteps));
}

/// <summary>One step of <see cref="SoftPromptTrainer.Train"/>.</summary>
/// <param name="Loss">Mean next-token loss per text token of the step's batch (nats).</param>
/// <param name="ValidNll">Mean NLL per scored validation token with the current prompt, when validated this step.</param>
public sealed record SoftPromptProgress(int Step, double Loss, double LearningRate, double? ValidNll, double Seconds);

/// <summary>The outcome of <see cref="SoftPromptTrainer.Train"/>: the best prompt (by validation NLL; the last without validation).</summary>
public sealed record SoftPromptTrainingResult(SoftPrompt Prompt, int BestStep, double? BestValidNll, IReadOnlyList<SoftPromptProgress> History);

/// <summary>
/// Prompt tuning over a frozen model (Compress-Then-Prompt, §3.2 of the brief): E = [P; Embed(X)], the loss the next-token
/// cross-entropy of the text positions only (prompt positions predict nothing; unlike the released script, the last prompt
/// vector is not asked for the first text token, so training targets the same tokens the evaluator scores), summed over
/// positions and averaged over the batch as the released script does; AdamW on P alone, gradient clipping, linear warm-up and decay; validation with the
/// shared perplexity evaluator every <see cref="SoftPromptTrainingOptions.EvalEvery"/> steps, the best prompt kept. The
/// model's weights are never handed to the optimizer and do not require gradients, so they stay bit-identical.
/// </summary>
public static class SoftPromptTrainer
{
    /// <summary>Trains a prompt for <paramref name="model"/> on random windows of <paramref name="train"/>, validating on
    /// <paramref name="valid"/> when given; starts from <paramref name="start"/> or the first vocabulary embeddings.</summary>
    public static SoftPromptTrainingResult Train(CausalLanguageModel model, IReadOnlyList<int> train, IReadOnlyList<int>? valid,
        SoftPromptTrainingOptions options, SoftPrompt? start = null, IProgress<SoftPromptProgress>? progress = null, CancellationToken cancellation = default)
    {
        options.Validate(model.Info);
        int n = start?.Length ?? options.Tokens, t = options.SequenceLength;
        if (train.Count < t + 1) throw new ArgumentException($"the training text holds {train.Count} tokens, fewer than one sequence of {t} + 1.");
        var evalTokens = valid?.Take(options.EvalTokens).ToArray();
        var perplexity = new PerplexityOptions { Window = t, Stride = t - 1 }; // the released chunking: each window scores tokens 2..T
        using var initial = start is null ? SoftPrompt.FromVocabulary(model, n) : null;
        var prompt = new Parameter((start ?? initial)!.Embeddings.to(model.Device, copy: true), requires_grad: true);
        prompt.DetachFromDisposeScope();
        var optimizer = torch.optim.AdamW(new[] { prompt }, options.LearningRate, weight_decay: options.WeightDecay);
        var random = new Random(options.Seed);
        var history = new List<SoftPromptProgress>();
        var clock = Stopwatch.StartNew();
        SoftPrompt? best = null;
        double? bestNll = null;
        int bestStep = 0;
        try
        {
            for (int step = 0; step < options.Steps; step++)
            {
                cancellation.ThrowIfCancellationRequested();
                double lr = options.LearningRateAt(step);
                foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;
                optimizer.zero_grad();
                double loss;
                using (var scope = torch.NewDisposeScope())
                {
                    var (inputs, targets) = Windows(train, random, options.BatchSize, t, model.Device);
                    var logits = model.ForwardTraining(inputs, prompt).narrow(1, n, t); // prompt positions predict nothing
                    var sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)).to(ScalarType.Float32), targets.reshape(-1), reduction: nn.Reduction.Sum);
                    (sum / options.BatchSize).backward();
                    loss = sum.item<float>() / (options.BatchSize * t);
                    torch.nn.utils.clip_grad_norm_(new[] { prompt }, options.GradientClip > 0 ? options.GradientClip : double.PositiveInfinity);
                }
                optimizer.step();
                bool last = step + 1 == options.Steps;
                double? validNll = null;
                if (evalTokens is not null && (last || options.EvalEvery > 0 && (step + 1) % options.EvalEvery == 0))
                {
                    using var current = SoftPrompt.FromTensor(prompt);
                    validNll = Perplexity.Evaluate(model, evalTokens, perplexity, current).MeanNll;
                    if (bestNll is null || validNll < bestNll)
                    {
                        best?.Dispose();
                        best = SoftPrompt.FromTensor(prompt);
                        (bestNll, bestStep) = (validNll, step + 1);
                    }
                }
                var p = new SoftPromptProgress(step + 1, loss, lr, validNll, clock.Elapsed.TotalSeconds);
                history.Add(p);
                progress?.Report(p);
            }
            if (best is null) (best, bestStep) = (SoftPrompt.FromTensor(prompt), options.Steps);
            var result = SoftPrompt.FromTensor(best.Embeddings, new Dictionary<string, string>
            {
                ["model_type"] = model.Info.ModelType,
                ["tokens"] = n.ToString(CultureInfo.InvariantCulture),
                ["steps"] = options.Steps.ToString(CultureInfo.InvariantCulture),
                ["best_step"] = bestStep.ToString(CultureInfo.InvariantCulture),
                ["valid_nll"] = bestNll?.ToString("R", CultureInfo.InvariantCulture) ?? "",
                ["sequence_length"] = t.ToString(CultureInfo.InvariantCulture),
                ["learning_rate"] = options.LearningRate.ToString("R", CultureInfo.InvariantCulture),
            });
            return new SoftPromptTrainingResult(result, bestStep, bestNll, history);
        }
        finally
        {
            best?.Dispose();
            optimizer.Dispose();
            prompt.Dispose();
        }
    }

    /// <summary>B random windows of T + 1 tokens: inputs [B,T] and the next tokens [B,T].</summary>
    static (Tensor Inputs, Tensor Targets) Windows(IReadOnlyList<int> tokens, Random random, int batch, int t, Device device)
    {
        var ids = new long[batch * (t + 1)];
        for (int b = 0; b < batch; b++)
        {
            int start = random.Next(tokens.Count - t);
            for (int i = 0; i <= t; i++) ids[b * (t + 1) + i] = tokens[start + i];
        }
        var all = torch.tensor(ids, new long[] { batch, t + 1 }).to(device);
        return (all.narrow(1, 0, t), all.narrow(1, 1, t));
    }
}
