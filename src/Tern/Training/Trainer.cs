using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using Tern.Training.InRank;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Training;

/// <summary>What one optimizer step did.</summary>
/// <param name="Step">Steps done, this one included.</param>
/// <param name="Loss">Mean training loss over the step's micro-batches (extra loss terms included).</param>
/// <param name="GradNorm">Global gradient norm before clipping.</param>
/// <param name="ValidLoss">Validation loss, on steps that validated.</param>
public sealed record TrainingProgress(int Step, int TotalSteps, double Loss, double LearningRate, double GradNorm,
    double TokensPerSecond, long TokensSeen, double? ValidLoss);

/// <summary>
/// Causal-LM training of a <see cref="CausalLanguageModel"/>: AdamW, linear warmup + cosine schedule, gradient accumulation
/// and clipping, random windows of a token file, periodic validation, atomic checkpoints that resume exactly (same losses,
/// bit-identical weights), and a Hugging Face folder at the end. Seams for later work: <see cref="TrainerOptions.TrainParameter"/>
/// (freeze), <see cref="TrainerOptions.ExtraLoss"/> (extra terms), <see cref="StepCompleted"/> (metrics).
/// </summary>
public sealed class Trainer : IDisposable
{
    readonly TrainerOptions options;
    readonly TokenStream train;
    readonly TokenStream? valid;
    readonly InRankTraining? inRank;
    Parameter[] trained = null!;
    string[] optimizerOrder = null!; // parameter names in the optimizer's state order
    double[] groupScales = []; // each parameter group's learning rate against the schedule's
    AdamW optimizer = null!;
    ulong sampler;

    Trainer(CausalLanguageModel model, TrainerOptions options, TrainingCheckpoint.State state, Func<InRankTraining>? inRank = null)
    {
        this.options = options;
        Model = model;
        try
        {
            this.inRank = inRank?.Invoke();
            int vocab = model.Info.VocabSize;
            if (options.StartToken is { } start && (start < 0 || start >= vocab))
                throw new OptionException($"{TernOption.StartToken} {start} is outside the model's vocabulary of {vocab}; pass an id such as config.json's bos_token_id.");
            train = TokenStream.Load(options.TrainTokens, options.TokenFormat, vocab);
            valid = options.ValidTokens is null ? null : TokenStream.Load(options.ValidTokens, options.TokenFormat, vocab);
            BuildOptimizer();
            Step = state.Step;
            sampler = state.SamplerState;
            TokensSeen = state.TokensSeen;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>A fresh AdamW over the parameters the run trains (all but the frozen ones).</summary>
    void BuildOptimizer()
    {
        var select = options.TrainParameter ?? (_ => true);
        bool Trains(string name) => select(name) && Model.LowRank?.IsFrozen(name) != true; // InRank's original variant: W0 stays
        foreach (var p in Model.Parameters) p.Tensor.requires_grad_(Trains(p.Name));
        var chosen = Model.Parameters.Where(p => Trains(p.Name)).ToArray();
        if (chosen.Length == 0) throw new ArgumentException("TrainParameter selects no parameter to train.");
        trained = chosen.Select(p => p.Tensor).ToArray();
        // As in most LM recipes, weight decay pulls matrices and embeddings only; norm weights and biases (1-D) are left alone.
        // Low-rank factors take a group of their own when their rate or decay is their own (FactorLearningRateScale,
        // FactorWeightDecay).
        var groups = new List<AdamW.ParamGroup>();
        var scales = new List<double>();
        bool ownGroup = (options.FactorLearningRateScale != 1 || options.FactorWeightDecay is not null) && Model.LowRank is not null;
        var factors = chosen.Where(p => ownGroup && IsFactor(p.Name)).ToArray();
        var decayed = chosen.Where(p => p.Tensor.dim() >= 2 && !(ownGroup && IsFactor(p.Name))).ToArray();
        var plain = chosen.Where(p => p.Tensor.dim() < 2).ToArray();
        void Group(ModelParameter[] members, double decay, double scale)
        {
            if (members.Length == 0) return;
            groups.Add(new AdamW.ParamGroup(members.Select(p => p.Tensor), new AdamW.Options { weight_decay = decay }));
            scales.Add(scale);
        }
        Group(decayed, options.WeightDecay, 1);
        Group(factors, options.FactorWeightDecay ?? options.WeightDecay, options.FactorLearningRateScale);
        Group(plain, 0, 1);
        groupScales = scales.ToArray();
        optimizerOrder = decayed.Concat(factors).Concat(plain).Select(p => p.Name).ToArray();
        optimizer = torch.optim.AdamW(groups, options.LearningRate, options.Beta1, options.Beta2, options.Epsilon, options.WeightDecay);
    }

    /// <summary>True for a low-rank factor (<c>L.weight_a</c> or <c>L.weight_b</c> of a factored linear map L).</summary>
    bool IsFactor(string name) =>
        (name.EndsWith(".weight_a", StringComparison.Ordinal) || name.EndsWith(".weight_b", StringComparison.Ordinal))
        && Model.LowRank!.Contains(name[..^".weight_a".Length]);

    /// <summary>
    /// InRank's stage hand-off after the last step of stage 1: the factors are truncated to their discovered ranks
    /// (<see cref="InRankTraining.HandOff"/>) and the optimizer is rebuilt over the new parameters. The other parameters keep
    /// their Adam state; the factors' moments are sliced as released or reset (<see cref="InRankOptions.Moments"/>).
    /// </summary>
    void HandOff()
    {
        var before = optimizer.state_dict().State.Cast<AdamW.State>().ToArray(); // read while the old parameters live
        var beforeOrder = optimizerOrder;
        var resized = inRank!.HandOff(Step);
        var old = optimizer;
        BuildOptimizer();
        var after = optimizer.state_dict().State.Cast<AdamW.State>().ToArray();
        using (torch.no_grad())
            for (int i = 0; i < after.Length; i++)
            {
                using var scope = torch.NewDisposeScope();
                var from = before[Array.IndexOf(beforeOrder, optimizerOrder[i])];
                Tensor? mean = from.exp_avg, square = from.exp_avg_sq;
                if (resized.TryGetValue(optimizerOrder[i], out int rank))
                {
                    mean = inRank.CarryMoment(optimizerOrder[i], from.exp_avg, rank);
                    square = inRank.CarryMoment(optimizerOrder[i], from.exp_avg_sq, rank);
                }
                if (mean is null || square is null) continue; // reset: zero moments, Adam step 0
                after[i].exp_avg.copy_(mean);
                after[i].exp_avg_sq.copy_(square);
                after[i].step = from.step;
            }
        old.Dispose();
    }

    /// <summary>The model being trained.</summary>
    public CausalLanguageModel Model { get; }
    /// <summary>Optimizer steps done.</summary>
    public int Step { get; private set; }
    /// <summary>Training tokens consumed.</summary>
    public long TokensSeen { get; private set; }
    /// <summary>Raised after every optimizer step (synchronously, on the training thread).</summary>
    public event Action<TrainingProgress>? StepCompleted;

    /// <summary>A fresh run: a model of <paramref name="config"/> with random HF-style initial weights seeded by
    /// <see cref="TrainerOptions.Seed"/>.</summary>
    public static Trainer Create(HfConfig config, TrainerOptions options)
    {
        options.Validate();
        var device = ComputeOptions.ResolveDevice(options.Device);
        TrainingCheckpoint.RemoveStaleTemporaries(options.OutputDirectory);
        if (options.InRank is { } inRank) config = InRankTraining.Prepare(config, inRank);
        var model = CausalLanguageModel.CreateRandom(config, device, options.DType, options.Seed);
        var trainer = new Trainer(model, options, new TrainingCheckpoint.State(0, (ulong)options.Seed ^ 0x5DEECE66DUL, 0),
            options.InRank is { } o ? () => InRankTraining.Start(model, o, options.Seed, options.OutputDirectory) : null);
        trainer.WriteRunConfig();
        return trainer;
    }

    /// <summary>Continues the run whose checkpoint is in <see cref="TrainerOptions.OutputDirectory"/>; the options should be
    /// the run's own (the schedule and data come from them, weights, optimizer and sampler from the checkpoint).</summary>
    /// <exception cref="TrainingCheckpointException">No checkpoint, or a corrupt one (the message names the file).</exception>
    /// <exception cref="ArgumentException">Options that change the computation differ from the run's train-config.json.</exception>
    public static Trainer Resume(TrainerOptions options)
    {
        options.Validate();
        RequireSameRun(options);
        string dir = TrainingCheckpoint.Find(options.OutputDirectory)
            ?? throw new TrainingCheckpointException($"{Path.GetFullPath(options.OutputDirectory)}: no {TrainingCheckpoint.LastName} to resume from.");
        var state = TrainingCheckpoint.Verify(dir);
        TrainingCheckpoint.RemoveStaleTemporaries(options.OutputDirectory);
        CausalLanguageModel model;
        try
        {
            model = CausalLanguageModel.Load(dir, new ModelLoadOptions { Device = options.Device, DType = options.DType, Trainable = true });
        }
        catch (CheckpointException e)
        {
            throw new TrainingCheckpointException($"{dir}: the checkpoint's model does not load: {e.Message}", e);
        }
        if (model.LowRank is not null && options.InRank is null)
        {
            model.Dispose();
            throw new ArgumentException($"{dir}: the checkpoint's model is low-rank (InRank); resume it with the run's InRank options.");
        }
        var trainer = new Trainer(model, options, state,
            options.InRank is { } inRank ? () => InRankTraining.Resume(model, inRank, dir, options.OutputDirectory, state.Step) : null);
        try
        {
            trainer.optimizer.load_state_dict(Path.Combine(dir, TrainingCheckpoint.OptimizerFile));
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            trainer.Dispose();
            throw new TrainingCheckpointException($"{Path.Combine(dir, TrainingCheckpoint.OptimizerFile)}: optimizer state does not load ({e.Message}).", e);
        }
        return trainer;
    }

    /// <summary>Training FLOPs per token of this model at the run's sequence length (<see cref="ModelFlops.TrainingPerToken"/>).</summary>
    public double FlopsPerToken => ModelFlops.TrainingPerToken(Model.Info with { ParameterCount = ParameterCount }, options.SequenceLength,
        Model.Config.GetBool("tie_word_embeddings") ?? false);

    /// <summary>The model's parameters now (tied tensors once): InRank's hand-off shrinks them below the loaded count.</summary>
    public long ParameterCount => Model.Parameters.Sum(p => p.Tensor.NumberOfElements);

    /// <summary>The device's peak FLOP/s for the run's matrix products, when known (<see cref="ModelFlops.PeakPerSecond"/>).</summary>
    public double? PeakFlops => ModelFlops.PeakPerSecond(DeviceReport.Name(Model.Device), (options.Autocast ?? options.DType).ToScalarType());

    /// <summary>The learning rate of the next step.</summary>
    public double CurrentLearningRate => LearningRateSchedule.At(Step, options);

    /// <summary>One optimizer step over <see cref="TrainerOptions.GradientAccumulation"/> micro-batches.</summary>
    public TrainingProgress TrainStep()
    {
        var clock = Stopwatch.StartNew();
        double lr = CurrentLearningRate;
        int g = 0;
        foreach (var group in optimizer.ParamGroups) group.LearningRate = lr * groupScales[g++];
        optimizer.zero_grad();
        int accumulation = options.GradientAccumulation;
        double lossSum = 0;
        for (int micro = 0; micro < accumulation; micro++)
        {
            using var scope = torch.NewDisposeScope();
            var (inputs, targets) = train.RandomBatch(ref sampler, options.BatchSize, options.SequenceLength, Model.Device, options.StartToken);
            inRank?.BeforeForward(Step + 1);
            var loss = Loss(inputs, targets, withExtra: true);
            (loss / accumulation).backward();
            lossSum += loss.to(ScalarType.Float64).item<double>();
        }
        double norm;
        using (var scope = torch.NewDisposeScope())
            // With no clip a max norm of +∞ makes the scale exactly 1: the norm is still reported.
            norm = torch.nn.utils.clip_grad_norm_(trained, options.GradientClip > 0 ? options.GradientClip : double.PositiveInfinity);
        optimizer.step();
        Step++;
        if (inRank?.HandOffDue(Step) == true) HandOff();
        long tokens = (long)accumulation * options.BatchSize * options.SequenceLength;
        TokensSeen += tokens;
        return new TrainingProgress(Step, options.TotalSteps, lossSum / accumulation, lr, norm, tokens / clock.Elapsed.TotalSeconds, TokensSeen, null);
    }

    Tensor Loss(Tensor inputs, Tensor targets, bool withExtra)
    {
        using var amp = options.Autocast is { } type ? Autocast.Enter(type.ToScalarType()) : null;
        var logits = Model.ForwardTraining(inputs);
        var loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).to(ScalarType.Float32), targets.reshape(-1));
        if (withExtra && options.ExtraLoss is { } extra) loss = loss + extra(Model, inputs, logits);
        return loss;
    }

    /// <summary>Mean cross-entropy over <see cref="TrainerOptions.EvalBatches"/> fixed validation batches; NaN without a
    /// validation file.</summary>
    public double Evaluate()
    {
        if (valid is null || options.EvalBatches == 0) return double.NaN;
        using var noGrad = torch.no_grad();
        double sum = 0;
        for (int i = 0; i < options.EvalBatches; i++)
        {
            using var scope = torch.NewDisposeScope();
            var (inputs, targets) = valid.FixedBatch(i, options.BatchSize, options.SequenceLength, Model.Device, options.StartToken);
            inRank?.BeforeForward(Step); // the release counts validation passes too
            sum += Loss(inputs, targets, withExtra: false).to(ScalarType.Float64).item<double>();
        }
        return sum / options.EvalBatches;
    }

    /// <summary>Trains until <see cref="TrainerOptions.TotalSteps"/> (or <paramref name="stopAfterStep"/>, or cancellation),
    /// validating and checkpointing on schedule; on reaching the last step writes the HF model to the output folder.</summary>
    /// <returns>The progress of each step run.</returns>
    public IReadOnlyList<TrainingProgress> Run(int? stopAfterStep = null, CancellationToken cancellation = default)
    {
        var history = new List<TrainingProgress>();
        while (Step < options.TotalSteps && (stopAfterStep is null || Step < stopAfterStep) && !cancellation.IsCancellationRequested)
        {
            var progress = TrainStep();
            bool last = Step == options.TotalSteps;
            if (valid is not null && (last || options.EvalEvery > 0 && Step % options.EvalEvery == 0))
                progress = progress with { ValidLoss = Evaluate() };
            history.Add(progress);
            StepCompleted?.Invoke(progress);
            if (last || options.CheckpointEvery > 0 && Step % options.CheckpointEvery == 0) SaveCheckpoint();
        }
        if (Step == options.TotalSteps) SaveModel(options.OutputDirectory);
        return history;
    }

    /// <summary>Writes <c>checkpoint-last</c> atomically (see <see cref="TrainingCheckpoint"/>).</summary>
    public string SaveCheckpoint() => TrainingCheckpoint.Save(options.OutputDirectory, new TrainingCheckpoint.State(Step, sampler, TokensSeen), dir =>
    {
        WriteWeights(dir);
        options.OnCheckpointFile?.Invoke(Path.Combine(dir, CheckpointReader.SingleFileName));
        optimizer.save_state_dict(Path.Combine(dir, TrainingCheckpoint.OptimizerFile));
        inRank?.SaveState(dir);
    }, options.OnCheckpointFile);

    /// <summary>Writes the model as a Hugging Face folder: config.json, model.safetensors (HF names, fused tensors split),
    /// generation_config.json and the tokenizer files of <see cref="TrainerOptions.TokenizerDirectory"/>.</summary>
    public string SaveModel(string directory)
    {
        Directory.CreateDirectory(directory);
        WriteWeights(directory);
        var config = Model.ConfigJson();
        var generation = new JsonObject { ["_from_model_config"] = true };
        foreach (string key in new[] { "bos_token_id", "eos_token_id", "pad_token_id" })
            if (config[key] is { } value) generation[key] = value.DeepClone();
        WriteJson(Path.Combine(directory, "generation_config.json"), generation);
        if (options.TokenizerDirectory is { } tokenizer)
            foreach (string name in new[] { "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer.model" })
                if (File.Exists(Path.Combine(tokenizer, name)))
                    File.Copy(Path.Combine(tokenizer, name), Path.Combine(directory, name), overwrite: true);
        return directory;
    }

    void WriteWeights(string directory)
    {
        WriteJson(Path.Combine(directory, "config.json"), Model.ConfigJson());
        using var noGrad = torch.no_grad();
        SafetensorsWriter.Write(Path.Combine(directory, CheckpointReader.SingleFileName), Model.StateDict());
    }

    void WriteRunConfig() => WriteJson(Path.Combine(options.OutputDirectory, TrainerOptions.RunConfigFile), options.ToJson());

    /// <summary>Options that change what the continued steps compute must be the run's own, or the resumed run would not be
    /// the run that was interrupted. File paths (data may move), device and the validation/checkpoint cadence may differ.</summary>
    static void RequireSameRun(TrainerOptions options)
    {
        string path = Path.Combine(options.OutputDirectory, TrainerOptions.RunConfigFile);
        if (!File.Exists(path)) return;
        var saved = JsonNode.Parse(File.ReadAllText(path)) as JsonObject;
        var now = options.ToJson();
        string[] free = { "train_tokens", "valid_tokens", "tokenizer", "eval_every", "eval_batches", "checkpoint_every" };
        var differences = now.Where(kv => !free.Contains(kv.Key) && !JsonNode.DeepEquals(kv.Value, saved?[kv.Key]))
            .Select(kv => $"{kv.Key} {saved?[kv.Key]?.ToJsonString() ?? "null"} → {kv.Value?.ToJsonString() ?? "null"}").ToArray();
        if (differences.Length > 0)
            throw new ArgumentException($"{path}: the run was started with other options ({string.Join(", ", differences)}); " +
                                        "resume with the run's own options (listed in that file).");
    }

    static void WriteJson(string path, JsonNode node) => AtomicFile.Write(path, s =>
    {
        using (var w = new Utf8JsonWriter(s, new JsonWriterOptions { Indented = true })) node.WriteTo(w);
        s.WriteByte((byte)'\n');
    });

    /// <summary>Releases the model and the optimizer state.</summary>
    public void Dispose()
    {
        optimizer.Dispose();
        Model.Dispose();
    }
}
