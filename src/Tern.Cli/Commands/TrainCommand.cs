using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Labs;
using Tern.Runtime;
using Tern.Training;
using Tern.Training.InRank;

namespace Tern.Cli.Commands;

/// <summary><c>tern train</c>: causal-LM pretraining from a model config and token files (see <see cref="Trainer"/>).</summary>
internal static class TrainCommand
{
    public static Command Create()
    {
        var d = new TrainerOptions { OutputDirectory = "", TrainTokens = "" };
        var config = new Option<string?>("--config") { Description = "Model config.json (HF format) of a fresh run; not needed with --resume." };
        var runConfig = new Option<string?>("--run-config") { Description = "JSON file of run options (keys as in a run's train-config.json); flags given on the command line override it. A resumed run reads its own." };
        var trainFile = new Option<string?>("--train") { Description = "Training token ids (binary, see --token-format)." };
        var validFile = new Option<string?>("--valid") { Description = "Validation token ids." };
        var output = new Option<string>("--output", "-o") { Description = "Run folder: checkpoint-last, then the HF model.", Required = true };
        var resume = new Option<bool>("--resume") { Description = "Continue from the run folder's checkpoint (exactly where it left off), with the options in its train-config.json." };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "Folder whose tokenizer files are copied into the output." };
        var format = new Option<string>("--token-format") { Description = "u16 or i32.", DefaultValueFactory = _ => "u16" };
        format.AcceptOnlyFromAmong("u16", "i32");
        var steps = new Option<int>("--steps") { Description = "Optimizer steps.", DefaultValueFactory = _ => d.TotalSteps };
        var seq = new Option<int>("--seq-len") { Description = "Tokens per sequence.", DefaultValueFactory = _ => d.SequenceLength };
        var batch = new Option<int>("--batch-size") { Description = "Sequences per micro-batch.", DefaultValueFactory = _ => d.BatchSize };
        var accum = new Option<int>("--grad-accum") { Description = "Micro-batches per step.", DefaultValueFactory = _ => d.GradientAccumulation };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate.", DefaultValueFactory = _ => d.LearningRate };
        var warmup = new Option<int>("--warmup") { Description = "Warmup steps.", DefaultValueFactory = _ => d.WarmupSteps };
        var minLr = new Option<double>("--min-lr-ratio") { Description = "Final learning rate / peak.", DefaultValueFactory = _ => d.MinLearningRateRatio };
        var decay = new Option<double>("--weight-decay") { Description = "AdamW weight decay (matrices only).", DefaultValueFactory = _ => d.WeightDecay };
        var clip = new Option<double>("--grad-clip") { Description = "Gradient norm clip (0 = none).", DefaultValueFactory = _ => d.GradientClip };
        var evalEvery = new Option<int>("--eval-every") { Description = "Validate every N steps.", DefaultValueFactory = _ => d.EvalEvery };
        var evalBatches = new Option<int>("--eval-batches") { Description = "Validation micro-batches.", DefaultValueFactory = _ => d.EvalBatches };
        var ckptEvery = new Option<int>("--checkpoint-every") { Description = "Checkpoint every N steps.", DefaultValueFactory = _ => d.CheckpointEvery };
        var startToken = new Option<int?>("--start-token") { Description = "Begin every training window with this token id (e.g. the model's bos_token_id), so the model can form an attention sink on it." };
        var seed = new Option<long>("--seed") { Description = "Seed of the initial weights and the data sampler.", DefaultValueFactory = _ => d.Seed };
        var device = new Option<string>("--device") { Description = "cpu, cuda or auto.", DefaultValueFactory = _ => "auto" };
        device.AcceptOnlyFromAmong("cpu", "cuda", "auto");
        var autocast = new Option<string>("--autocast") { Description = "bf16 mixed precision (fp32 weights and optimizer): auto = on for CUDA, off for CPU.", DefaultValueFactory = _ => "auto" };
        autocast.AcceptOnlyFromAmong("auto", "bf16", "off");
        var probe = new Option<bool>("--probe-dynamics") { Description = $"JoMA's probe: at step 0, every --probe-every steps and the last, per layer the attention entropy on fixed validation windows and the MLP weights' stable rank, into <output>/{ProbeFolder}/ (CSV, PNGs)." };
        var probeWindows = new Option<int>("--probe-windows") { Description = "Windows (of --seq-len tokens, from the start of --valid, else --train) the probe measures attention on.", DefaultValueFactory = _ => 4 };
        var probeEvery = new Option<int?>("--probe-every") { Description = "Probe every N steps (default: --eval-every, else --checkpoint-every)." };
        var r0 = new InRankOptions();
        var inrank = new Option<bool>("--inrank") { Description = "InRank: train the MLP linears as growing low-rank products B·A, then at the discovered rank (Llama family, GPT-2)." };
        var inrankVariant = new Option<string>("--inrank-variant") { Description = "efficient (W = B·A, as released) or original (W = W0 + B·A, W0 frozen).", DefaultValueFactory = _ => "efficient" };
        inrankVariant.AcceptOnlyFromAmong("efficient", "original");
        var inrankRank = new Option<int>("--inrank-initial-rank") { Description = "InRank's initial rank r0.", DefaultValueFactory = _ => r0.InitialRank };
        var inrankBuffer = new Option<int>("--inrank-buffer") { Description = "InRank's buffer b of live components past the rank (rank cap Rmax − b).", DefaultValueFactory = _ => r0.Buffer };
        var inrankThreshold = new Option<double>("--inrank-threshold") { Description = "InRank's explained-variance threshold α.", DefaultValueFactory = _ => r0.Threshold };
        var inrankWarmup = new Option<int>("--inrank-warmup") { Description = "Forward passes before InRank's first rank check.", DefaultValueFactory = _ => r0.Warmup };
        var inrankEvery = new Option<int>("--inrank-check-every") { Description = "A rank check every N forward passes (validation counts, as released).", DefaultValueFactory = _ => r0.CheckEvery };
        var inrankStage1 = new Option<int>("--inrank-stage1-steps") { Description = "Optimizer steps of rank discovery; then the factors are truncated to their ranks.", DefaultValueFactory = _ => r0.Stage1Steps };
        var inrankScale = new Option<double>("--inrank-init-scale") { Description = "Scale of the Kaiming-uniform initial factors.", DefaultValueFactory = _ => r0.InitScale };
        var inrankMaxRank = new Option<double>("--inrank-max-rank-fraction") { Description = "InRank's Rmax as a fraction of the full rank (released: 0.5); the rank is capped at Rmax − buffer.", DefaultValueFactory = _ => r0.MaxRankFraction };
        var inrankMoments = new Option<string>("--inrank-moments") { Description = "Adam moments of the factors at the hand-off: slice (as released) or reset.", DefaultValueFactory = _ => "slice" };
        inrankMoments.AcceptOnlyFromAmong("slice", "reset");
        var lowRank = new Option<int?>("--low-rank") { Description = "Fixed-rank control: every MLP linear B·A at this rank throughout (no rank discovery)." };
        var factorDecay = new Option<double?>("--factor-weight-decay") { Description = "AdamW weight decay of low-rank factors (InRank, --low-rank); default: --weight-decay's." };
        var factorLr = new Option<double>("--factor-lr-scale") { Description = "Learning rate of low-rank factors (InRank, --low-rank) as a multiple of the others' (LoRA+-style).", DefaultValueFactory = _ => d.FactorLearningRateScale };
        var command = new Command("train", "Train a causal language model from a config and token files; writes an HF model folder.")
            { config, runConfig, trainFile, validFile, output, resume, tokenizer, format, steps, seq, batch, accum, lr, warmup, minLr, decay,
              clip, evalEvery, evalBatches, ckptEvery, seed, startToken, device, autocast, probe, probeWindows, probeEvery,
              inrank, inrankVariant, inrankRank, inrankBuffer, inrankThreshold, inrankWarmup, inrankEvery, inrankStage1, inrankScale, inrankMaxRank, inrankMoments, lowRank, factorLr, factorDecay };
        command.SetAction((r, cancellation) =>
        {
            string outputDir = r.GetValue(output)!;
            var deviceKind = ComputeOptions.ParseDevice(r.GetValue(device)!);
            // Precedence: defaults < run-config file (given, or the resumed run's own) < flags given on the command line.
            string? file = r.GetValue(runConfig);
            string own = Path.Combine(outputDir, TrainerOptions.RunConfigFile);
            if (file is null && r.GetValue(resume) && File.Exists(own)) file = own;
            var o = file is null ? d with { OutputDirectory = outputDir } : TrainerOptions.Load(file, d with { OutputDirectory = outputDir });
            T Pick<T>(Option<T> option, T current) => r.GetResult(option) is { Implicit: false } ? r.GetValue(option)! : current;
            o = o with
            {
                TrainTokens = Pick(trainFile, o.TrainTokens) ?? "", ValidTokens = Pick(validFile, o.ValidTokens),
                TokenizerDirectory = Pick(tokenizer, o.TokenizerDirectory),
                TokenFormat = Pick(format, o.TokenFormat == TokenFileFormat.Int32 ? "i32" : "u16") == "i32" ? TokenFileFormat.Int32 : TokenFileFormat.UInt16,
                TotalSteps = Pick(steps, o.TotalSteps), SequenceLength = Pick(seq, o.SequenceLength), BatchSize = Pick(batch, o.BatchSize),
                GradientAccumulation = Pick(accum, o.GradientAccumulation), LearningRate = Pick(lr, o.LearningRate),
                WarmupSteps = Pick(warmup, o.WarmupSteps), MinLearningRateRatio = Pick(minLr, o.MinLearningRateRatio),
                WeightDecay = Pick(decay, o.WeightDecay), FactorLearningRateScale = Pick(factorLr, o.FactorLearningRateScale),
                FactorWeightDecay = Pick(factorDecay, o.FactorWeightDecay), GradientClip = Pick(clip, o.GradientClip), EvalEvery = Pick(evalEvery, o.EvalEvery),
                EvalBatches = Pick(evalBatches, o.EvalBatches), CheckpointEvery = Pick(ckptEvery, o.CheckpointEvery), Seed = Pick(seed, o.Seed),
                StartToken = Pick(startToken, o.StartToken),
                Device = deviceKind,
                Autocast = (r.GetResult(autocast) is { Implicit: false } || file is null ? r.GetValue(autocast) : null) switch
                {
                    "bf16" => ModelDType.BFloat16,
                    "auto" when ComputeOptions.ResolveDevice(deviceKind).type == TorchSharp.DeviceType.CUDA => ModelDType.BFloat16,
                    "auto" or "off" => null,
                    _ => o.Autocast, // from the run config
                },
            };
            // InRank: on when asked (--inrank or --low-rank) or in the run config; its flags override the config's values.
            bool Given(Option option) => r.GetResult(option) is { Implicit: false };
            if (r.GetValue(inrank) || Given(lowRank) || o.InRank is not null)
            {
                var ir = o.InRank ?? new InRankOptions();
                o = o with
                {
                    InRank = ir with
                    {
                        Variant = Given(inrankVariant) ? Enum.Parse<Tern.Models.LowRankVariant>(r.GetValue(inrankVariant)!, true) : ir.Variant,
                        InitialRank = Pick(inrankRank, ir.InitialRank), Buffer = Pick(inrankBuffer, ir.Buffer), Threshold = Pick(inrankThreshold, ir.Threshold),
                        Warmup = Pick(inrankWarmup, ir.Warmup), CheckEvery = Pick(inrankEvery, ir.CheckEvery), Stage1Steps = Pick(inrankStage1, ir.Stage1Steps),
                        InitScale = Pick(inrankScale, ir.InitScale), MaxRankFraction = Pick(inrankMaxRank, ir.MaxRankFraction),
                        Moments = Given(inrankMoments) ? Enum.Parse<MomentHandoff>(r.GetValue(inrankMoments)!, true) : ir.Moments,
                        FixedRank = Pick(lowRank, ir.FixedRank),
                    },
                };
            }
            if (string.IsNullOrEmpty(o.TrainTokens))
                throw new UsageException("--train is required (or a --run-config / resumed run that names train_tokens).");
            ProbeSchedule? schedule = null;
            if (r.GetValue(probe))
            {
                int windows = r.GetValue(probeWindows), every = r.GetValue(probeEvery) ?? (o.EvalEvery > 0 ? o.EvalEvery : o.CheckpointEvery);
                if (windows < 1) throw new UsageException($"--probe-windows must be at least 1 (got {windows}).");
                if (every < 0) throw new UsageException($"--probe-every must not be negative (got {every}).");
                schedule = new ProbeSchedule(windows, every);
            }
            return Task.FromResult(Run(r.GetValue(config), r.GetValue(resume), o, schedule, cancellation));
        });
        command.Subcommands.Add(PlotCommand());
        return command;
    }

    /// <summary><c>tern train plot LOG</c>: draws a run's loss curve where the plotting natives exist (a GPU pack leaves them out).</summary>
    static Command PlotCommand()
    {
        var log = new Argument<string>("log") { Description = "A run's train-log.jsonl (loss curve) or inrank-log.jsonl (rank of each MLP linear against the step)." };
        var output = new Option<string?>("--output", "-o") { Description = "PNG to write (default: loss-curve.png next to the log)." };
        var title = new Option<string>("--title") { Description = "Plot title.", DefaultValueFactory = _ => "training loss" };
        var command = new Command("plot", "Draw the loss curve of a run's train-log.jsonl, or the ranks of its inrank-log.jsonl, as a PNG.") { log, output, title };
        command.SetAction(r =>
        {
            string path = r.GetValue(log)!;
            if (!File.Exists(path)) throw new FileNotFoundException($"'{Path.GetFullPath(path)}' does not exist.", path);
            bool ranks = Path.GetFileName(path) == RankLog.FileName;
            string png = r.GetValue(output) ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, ranks ? RankLog.PlotName : "loss-curve.png");
            if (ranks) RankLog.SavePng(path, png, r.GetResult(title) is { Implicit: false } ? r.GetValue(title)! : "InRank: rank of each MLP linear");
            else LossCurve.FromLog(path).SavePng(png, r.GetValue(title)!);
            Console.WriteLine(png);
            return 0;
        });
        return command;
    }

    /// <summary>Where <c>--probe-dynamics</c> writes, inside the run folder.</summary>
    const string ProbeFolder = "dynamics";

    /// <summary><c>--probe-dynamics</c>: windows measured, and every how many steps (0: the start and the end only).</summary>
    sealed record ProbeSchedule(int Windows, int Every);

    static int Run(string? configPath, bool resume, TrainerOptions options, ProbeSchedule? probeSchedule, CancellationToken cancellation)
    {
        bool hasCheckpoint = TrainingCheckpoint.Find(options.OutputDirectory) is not null;
        if (hasCheckpoint && !resume)
            throw new ArgumentException($"--output '{options.OutputDirectory}' already holds a checkpoint: pass --resume to continue it, or choose another folder.");
        Trainer trainer;
        if (hasCheckpoint) trainer = Trainer.Resume(options);
        else
        {
            if (configPath is null) throw new UsageException(resume ? "--resume: no checkpoint in --output yet, and no --config to start one." : "--config is required for a new run.");
            if (!File.Exists(configPath)) throw new FileNotFoundException($"--config: '{Path.GetFullPath(configPath)}' does not exist.", configPath);
            trainer = Trainer.Create(HfConfig.Parse(File.ReadAllText(configPath), configPath), options);
        }
        using (trainer)
        {
            string deviceName = DeviceReport.Name(trainer.Model.Device);
            Console.Error.WriteLine($"{(hasCheckpoint ? "resuming" : "training")} {trainer.Model.Info.ModelType} ({trainer.Model.Info.ParameterCount:N0} parameters) " +
                                    $"on {deviceName}, {(options.Autocast is { } amp ? amp.ShortName() + " autocast" : options.DType.ShortName())}, from step {trainer.Step}/{options.TotalSteps}");
            string log = Path.Combine(options.OutputDirectory, TrainingLog.FileName);
            TrainingLog.TruncateAfter(log, trainer.Step); // rows a killed run logged past its checkpoint are computed again
            trainer.StepCompleted += p =>
            {
                string valid = p.ValidLoss is { } v ? $"  valid {v:F4}" : "";
                Console.Error.Write(string.Create(CultureInfo.InvariantCulture,
                    $"\rstep {p.Step}/{p.TotalSteps}  loss {p.Loss:F4}  lr {p.LearningRate:E2}  grad {p.GradNorm:F2}  {p.TokensPerSecond:N0} tok/s{valid}   "));
                if (p.ValidLoss is not null) Console.Error.WriteLine();
                TrainingLog.Append(log, p);
            };
            var probe = probeSchedule is { } schedule ? Probe(trainer, options, schedule) : null;
            trainer.Run(cancellation: cancellation);
            Console.Error.WriteLine();
            if (probe is not null) Plot(() => TrainingDynamicsProbe.Plot(probe.CsvPath, $"{trainer.Model.Info.ModelType}, {trainer.Model.Info.ParameterCount / 1e6:F1}M parameters"),
                $"tern lab joma plot {probe.CsvPath}");
            if (File.Exists(log))
            {
                WriteSummary(Path.Combine(options.OutputDirectory, "train-summary.json"), trainer, deviceName, log);
                Plot(() => LossCurve.FromLog(log).SavePng(Path.Combine(options.OutputDirectory, "loss-curve.png"),
                    $"{trainer.Model.Info.ModelType}, {trainer.ParameterCount / 1e6:F1}M parameters, {trainer.Step} steps"), $"tern train plot {log}");
            }
            string ranks = Path.Combine(options.OutputDirectory, RankLog.FileName);
            if (File.Exists(ranks))
                Plot(() => RankLog.SavePng(ranks, Path.Combine(options.OutputDirectory, RankLog.PlotName), "InRank: rank of each MLP linear"), $"tern train plot {ranks}");
            if (trainer.Step < options.TotalSteps)
            {
                trainer.SaveCheckpoint(); // interrupted (Ctrl+C): keep every finished step
                Console.WriteLine($"stopped at step {trainer.Step}; checkpoint saved, continue with --resume");
                return 130;
            }
            Console.WriteLine($"wrote {Path.GetFullPath(options.OutputDirectory)} after {trainer.Step} steps ({trainer.TokensSeen:N0} tokens)");
        }
        return 0;
    }

    /// <summary>Draws a plot where the plotting natives exist: the GPU machine's pack leaves them out (tools/gpu/pack.sh), so
    /// there it says how to draw it where the results come back.</summary>
    static void Plot(Action draw, string redraw)
    {
        try { draw(); }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException)
        {
            Console.Error.WriteLine($"note: plot not drawn here ({e.GetType().Name}); draw it with '{redraw}'");
        }
    }

    /// <summary>JoMA's training probe on the trainer's <c>StepCompleted</c> seam: the run's start (a fresh run), every
    /// <see cref="ProbeSchedule.Every"/> steps and the last step, on the same windows each time.</summary>
    static TrainingDynamicsProbe Probe(Trainer trainer, TrainerOptions options, ProbeSchedule schedule)
    {
        var source = TokenStream.Load(options.ValidTokens ?? options.TrainTokens, options.TokenFormat, trainer.Model.Info.VocabSize);
        var probe = TrainingDynamicsProbe.Create(Path.Combine(options.OutputDirectory, ProbeFolder),
            TrainingDynamicsProbe.Windows(source, schedule.Windows, options.SequenceLength, options.StartToken), trainer.Step == 0 ? null : trainer.Step);
        if (trainer.Step == 0) probe.Record(trainer.Model, 0);
        trainer.StepCompleted += p =>
        {
            if (p.Step == p.TotalSteps || schedule.Every > 0 && p.Step % schedule.Every == 0) probe.Record(trainer.Model, p.Step);
        };
        return probe;
    }

    /// <summary>Throughput over the logged steps after the first few (allocator and kernel warm-up), model FLOPs utilisation
    /// where the card's peak is known, and the final losses: printed and written next to the log. Read from the log, so a run
    /// resumed with no step left (its export had failed) still writes it.</summary>
    static void WriteSummary(string path, Trainer trainer, string deviceName, string log)
    {
        var rows = TrainingLog.Read(log).Select(r => r.Row).ToList();
        if (rows.Count == 0) return;
        // Every step consumes the same tokens, so the steady rate is the harmonic mean of the per-step rates.
        var steady = rows.Count > 10 ? rows.Skip(5).ToList() : rows;
        double tokensPerSecond = steady.Count / steady.Sum(r => 1 / (double)r["tokens_per_second"]!);
        double flops = trainer.FlopsPerToken;
        double? mfu = trainer.PeakFlops is { } peak ? tokensPerSecond * flops / peak : null;
        var last = rows[^1];
        var summary = new JsonObject
        {
            ["device"] = deviceName, ["parameters"] = trainer.ParameterCount, ["steps"] = (int)last["step"]!,
            ["tokens_per_second"] = Math.Round(tokensPerSecond), ["flops_per_token"] = flops,
            ["model_tflops_per_second"] = Math.Round(tokensPerSecond * flops / 1e12, 2), ["mfu"] = mfu is { } m ? Math.Round(m, 4) : null,
            ["final_loss"] = (double)last["loss"]!, ["final_valid_loss"] = rows.LastOrDefault(r => r["valid_loss"] is not null)?["valid_loss"]?.GetValue<double>(),
        };
        AtomicFile.Write(path, s => s.Write(System.Text.Encoding.UTF8.GetBytes(summary.ToJsonString(new() { WriteIndented = true }) + "\n")));
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"throughput {tokensPerSecond:N0} tok/s, {tokensPerSecond * flops / 1e12:F1} model TFLOP/s{(mfu is { } u ? $", MFU {u:P1}" : "")} ({deviceName})"));
    }
}
