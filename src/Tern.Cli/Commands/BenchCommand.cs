using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Tern.Generation;
using Tern.Models;
using Tern.Offloading;
using Tern.Runtime;
using Tern.Sparsity;

namespace Tern.Cli.Commands;

/// <summary><c>tern bench</c>: prefill and decode throughput over batch sizes and prompt lengths, peak memory; appends
/// one row per configuration to a CSV file under bench/.</summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var common = new CommonOptions();
        var batches = new Option<int[]>("--batch", "-b") { Description = "Batch sizes (repeat or comma-separate).", DefaultValueFactory = _ => new[] { 1 }, CustomParser = ParseInts };
        var prompts = new Option<int[]>("--prompt", "-p") { Description = "Prompt lengths in tokens.", DefaultValueFactory = _ => new[] { 128 }, CustomParser = ParseInts };
        var newTokens = new Option<int>("--new-tokens", "-n") { Description = "Tokens generated per sequence.", DefaultValueFactory = _ => 32 };
        var output = new Option<string>("--output", "-o") { Description = $"CSV file the rows are appended to (default {DefaultOutput}).", DefaultValueFactory = _ => DefaultOutput };
        var floor = new Option<bool>("--floor") { Description = "Also measure device copy bandwidth and the weight-read floor per decode step." };
        var label = new Option<string?>("--label") { Description = "Free text stored with the rows." };
        var noGraphs = new Option<bool>("--no-cuda-graphs") { Description = "Run decode steps eagerly on CUDA (no graph replay)." };
        var prefillChunk = new Option<int>("--prefill-chunk") { Description = "Prefill in steps of at most N tokens (0 = the whole prompt at once)." };
        var measureSteps = new Option<int>("--measure-steps")
        {
            Description = "With --offload: run the prefill and only N decode steps of the --new-tokens generation (caches sized for all of it) and " +
                "project the rest from the mean measured step (FlexGen's --cut-gen-len; labelled as projected). 0 = run every step.",
        };
        var sweep = new Option<string?>("--sparsity-sweep")
        {
            Description = "DejaVu levels run one after another on the one loaded model, ';'-separated, each 'dense' or a --sparsity value " +
                "(e.g. \"dense;mlp=0.1,heads=0.5\"): decode ms/step and the speed-up over the dense level per row; each sparse level also " +
                "reports its predictor time per layer and the sparse MLP's achieved bandwidth (bytes read / time, against the floor with --floor).",
        };
        var command = new Command("bench", "Measure prefill and decode throughput and peak memory.") { batches, prompts, newTokens, output, floor, label, noGraphs, prefillChunk, measureSteps, sweep };
        common.AddTo(command);
        var kv = new KvPolicyFlags();
        kv.AddTo(command);
        var offload = new OffloadFlags();
        offload.AddTo(command);
        var sparsity = new SparsityFlags();
        sparsity.AddTo(command);
        var softPrompt = new SoftPromptFlag();
        softPrompt.AddTo(command);
        command.Validators.Add(result =>
        {
            if (result.GetValue(sweep) is not { } levels) return;
            if (result.GetValue(sparsity.Spec) is not null) result.AddError("--sparsity-sweep runs its own levels; drop --sparsity.");
            try
            {
                SweepLevels(levels);
            }
            catch (ArgumentException e)
            {
                result.AddError(CliErrors.Message(e));
            }
        });
        command.SetAction(r =>
        {
            if (!offload.Enabled(r))
            {
                var levels = r.GetValue(sweep) is { } spec ? SweepLevels(spec) : new[] { sparsity.Read(r) };
                return Run(r, common, kv, levels, softPrompt, batches, prompts, newTokens, output, floor, label, noGraphs, prefillChunk);
            }
            if (r.GetValue(sweep) is not null) throw new UsageException("--sparsity-sweep runs its levels on one model in memory; with --offload, time one level with --sparsity.");
            return RunOffloaded(r, common, offload, kv, sparsity, softPrompt, prompts, newTokens, output, label, measureSteps);
        });
        command.Subcommands.Add(ServeBenchCommand.Create());
        command.Subcommands.Add(JsonBenchCommand.Create());
        return command;
    }

    internal static int[] ParseInts(System.CommandLine.Parsing.ArgumentResult result)
    {
        var values = new List<int>();
        foreach (var token in result.Tokens)
            foreach (string part in token.Value.Split(',', StringSplitOptions.RemoveEmptyEntries))
            {
                if (!int.TryParse(part, out int v) || v < 1) { result.AddError($"'{part}' is not a positive integer."); return Array.Empty<int>(); }
                values.Add(v);
            }
        return values.ToArray();
    }

    /// <summary>The levels of <c>--sparsity-sweep</c>: null for 'dense', else the options a <c>--sparsity</c> value gives.</summary>
    static SparsityOptions?[] SweepLevels(string spec) => spec.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(level => level.Equals("dense", StringComparison.OrdinalIgnoreCase) ? null : SparsityOptions.Parse(level)).ToArray() is { Length: > 0 } levels
        ? levels : throw new OptionException($"--sparsity-sweep names no level: write e.g. \"dense;mlp=0.1,heads=0.5\".");

    static int Run(ParseResult r, CommonOptions common, KvPolicyFlags kv, IReadOnlyList<SparsityOptions?> levels, SoftPromptFlag softPrompt, Option<int[]> batches,
        Option<int[]> prompts, Option<int> newTokens, Option<string> output, Option<bool> floorOption, Option<string?> label, Option<bool> noGraphs, Option<int> prefillChunk)
    {
        int steps = r.GetValue(newTokens);
        if (steps < 2) throw new UsageException("--new-tokens must be at least 2 (one prefill token plus decode steps).");
        var (model, _, folder) = common.Load(r, needTokenizer: false, progress: true);
        using (model)
        {
            var device = model.Device;
            string card = DeviceReport.Name(device);
            long weightBytes = model.Info.ParameterCount * model.DType.ElementSize();
            double floorMs = double.NaN, copyTBps = double.NaN;
            if (r.GetValue(floorOption))
            {
                double bandwidth = DeviceReport.CopyBandwidth(device);
                copyTBps = bandwidth / 1e12;
                floorMs = weightBytes / bandwidth * 1e3;
                Console.WriteLine($"copy bandwidth {copyTBps:F2} TB/s; weights {weightBytes / 1e9:F2} GB; weight-read floor {floorMs:F3} ms/step");
            }
            Console.WriteLine($"{card} | {model.Info.ModelType} {model.Info.ParameterCount / 1e6:F1}M params | {model.DType.ShortName()}");
            Console.WriteLine($"{"batch",5} {"prompt",6} {"new",5} {"prefill ms",11} {"decode ms/step",15} {"decode tok/s",13} {"peak GB",8}");
            var rows = new List<string>();
            // With a soft prompt its keys and values are prefilled here, once; the timed prefills run the text only.
            using var soft = softPrompt.Load(r, model);
            using var prompted = soft is null ? null : Tern.Prompting.PromptedModel.Create(model, soft);
            var generator = new Generator(prompted is null ? model : prompted);
            string promptLabel = soft is null ? "" : $" [soft prompt {soft.Length}]";
            var policy = kv.Read(r);
            string policyLabel = policy.Policy == "full" && policy.Bits == 16 ? "" : $" [kv {policy.Policy}{(r.GetValue(kv.Budget) is { } b ? " " + b : "")}{(policy.Bits == 16 ? "" : $" {policy.Bits}-bit")}{(r.GetValue(kv.EvictEvery) is > 1 and var every ? $" evict every {every}" : "")}]";
            var denseMs = new Dictionary<(int Batch, int Prompt), double>();
            foreach (var level in levels)
            {
                var random = new Random(0); // every level decodes the same prompts
                using var applied = SparsityFlags.Apply(r, common, model, level);
                string levelLabel = levels.Count == 1 && level is null ? "" : $" [{Describe(level)}]";
                if (applied is not null)
                {
                    var times = Sparsity.SparsityTiming.Measure(model, applied);
                    string bandwidth = double.IsNaN(times.SparseMlpMs) ? "MLP dense" :
                        $"sparse MLP {times.SparseMlpMs:F4} ms/layer (up {times.SparseUpMs:F4}) reading {times.SparseMlpBytes / 1e6:F1} MB: {times.SparseMlpBandwidth / 1e12:F2} TB/s" +
                        (double.IsNaN(copyTBps) ? "" : $" ({times.SparseMlpBandwidth / 1e12 / copyTBps:P0} of the copy bandwidth)");
                    Console.WriteLine($"{Describe(level)}: predictors {times.PredictorMs:F4} ms/layer (products {times.PredictorProductsMs:F4}); {bandwidth}; dense MLP {times.DenseMlpMs:F4} ms/layer, " +
                        $"{times.DenseMlpBytes / 1e6:F1} MB: {times.DenseMlpBandwidth / 1e12:F2} TB/s");
                    levelLabel += $" [predictors {times.PredictorMs:0.####} ms/layer; sparse MLP {times.SparseMlpMs:0.####} ms/layer {times.SparseMlpBandwidth / 1e12:0.##} TB/s; dense MLP {times.DenseMlpMs:0.####} ms/layer {times.DenseMlpBandwidth / 1e12:0.##} TB/s]";
                }
                try
                {
                    foreach (int prompt in r.GetValue(prompts)!)
                    {
                        // What one sequence holds at the end (KV cache, or a recurrent model's fixed-size state): an allocation, not an estimate.
                        using (var one = model.CreateCache(1, prompt + steps, Caching.KvCachePolicies.Create(policy), maxStepTokens: prompt))
                            Console.WriteLine($"state per sequence after {prompt + steps} tokens: {one.Bytes / 1e6:F3} MB");
                        foreach (int batch in r.GetValue(batches)!)
                        {
                            var ids = Enumerable.Range(0, batch)
                                .Select(_ => (IReadOnlyList<int>)Enumerable.Range(0, prompt).Select(_ => random.Next(model.Info.VocabSize)).ToArray()).ToArray();
                            var options = new GenerationOptions { MaxNewTokens = steps, IgnoreEos = true, UseCudaGraphs = !r.GetValue(noGraphs), PrefillChunk = r.GetValue(prefillChunk) }.WithKvPolicy(policy);
                            // Warm-up: kernels, allocator, plans, and the JIT's compiled code.
                            WarmUp.UntilSteady(() => generator.GenerateTokens(ids, options with { MaxNewTokens = Math.Min(steps, 16) }));
                            var result = generator.GenerateTokens(ids, options);
                            long used = DeviceReport.UsedBytes(device);
                            var s = result.Stats;
                            string speedUp = "";
                            if (level is null) denseMs[(batch, prompt)] = s.DecodeMillisecondsPerStep;
                            else if (denseMs.TryGetValue((batch, prompt), out double dense)) speedUp = $" [{dense / s.DecodeMillisecondsPerStep:F2}x dense decode]";
                            // Which steps left the graphs (an eviction not captured shows as eager steps).
                            string graphSteps = s.Graphs is { } g ? $" [graph steps: {g.Replays} replayed, {g.EagerSteps} eager, {g.Captures} captures]" : "";
                            Console.WriteLine($"{batch,5} {prompt,6} {steps,5} {s.Prefill.TotalMilliseconds,11:F1} {s.DecodeMillisecondsPerStep,15:F3} {s.DecodeTokensPerSecond,13:F1} {used / 1e9,8:F2}{levelLabel}{speedUp}{graphSteps}");
                            rows.Add(string.Join(',', new[]
                            {
                                DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture), Csv(card), device.type.ToString().ToLowerInvariant(),
                                Csv(folder + (r.GetValue(common.Dummy) ? " (dummy)" : "")), model.DType.ShortName(), batch.ToString(), prompt.ToString(), steps.ToString(),
                                F(s.Prefill.TotalMilliseconds), F(s.DecodeMillisecondsPerStep), F(s.DecodeTokensPerSecond), F(used / 1e9),
                                F(copyTBps), F(floorMs), Csv((r.GetValue(label) ?? "") + levelLabel + speedUp + policyLabel + graphSteps + promptLabel + (r.GetValue(prefillChunk) is > 0 and var chunk ? $" [prefill chunk {chunk}]" : "") + (device.type == TorchSharp.DeviceType.CUDA && r.GetValue(noGraphs) ? " [eager]" : "")),
                            }));
                        }
                    }
                }
                finally
                {
                    model.Sparsity = null; // before the level's predictors are released; lays the down-projections out for dense steps again
                }
            }
            Append(r.GetValue(output)!, rows);
            return 0;
        }
    }

    static string Describe(SparsityOptions? level) => level is null ? "dense"
        : FormattableString.Invariant($"sparsity mlp={level.MlpActive:0.###},heads={level.HeadsActive:0.###},{level.Rule.ToString().ToLowerInvariant()}{(level.OverlapPredictors ? "" : ",in order")}");

    /// <summary>
    /// FlexGen's benchmark: one block of gbs·ngb random prompts per prompt length through the offloaded model, after a short
    /// warm-up; generation throughput = block·n / (prefill + decode) as FlexGen reports it, next to the cost model's prediction.
    /// Every step is timed (the step times go to a <c>-steps.csv</c> beside the output); with <c>--measure-steps N</c> only the
    /// prefill and N decode steps run and the remaining steps are projected at the mean of the measured ones after two warm
    /// steps (FlexGen's <c>project_decode_latency</c>) — under-counting a cache that slows as it grows, so the row says so.
    /// With <c>--soft-prompt</c> every block's prefill first runs the prompt alone over one row (timed with it).
    /// </summary>
    static int RunOffloaded(ParseResult r, CommonOptions common, OffloadFlags offload, KvPolicyFlags kv, SparsityFlags sparsity, SoftPromptFlag softPrompt, Option<int[]> prompts,
        Option<int> newTokens, Option<string> output, Option<string?> label, Option<int> measureStepsOption)
    {
        int steps = r.GetValue(newTokens);
        int measureSteps = r.GetValue(measureStepsOption);
        if (measureSteps < 0 || measureSteps > 0 && measureSteps < 4)
            throw new UsageException("--measure-steps must be 0 (every step) or at least 4 (two warm steps and the steps averaged).");
        if (measureSteps >= steps - 1) measureSteps = 0; // nothing to project
        var kvPolicy = kv.Read(r);
        var kvCache = Caching.KvCachePolicies.Create(kvPolicy);
        int softLength = softPrompt.Length(r);
        var (folder, load) = common.LoadOptions(r);
        // Offloaded models are large: constant dummy weights (FlexGen's and the HF baseline's choice; throughput does not depend
        // on the values) fill 60 GB in seconds where the hashed normal noise would take many minutes on the CPU.
        if (load.DummyWeights is not null) load = load with { DummyWeights = new Checkpoints.DummyWeightOptions { Kind = Checkpoints.DummyWeightKind.Constant } };
        var device = ComputeOptions.ResolveDevice(load.Device);
        string card = DeviceReport.Name(device);
        var rows = new List<string>();
        var random = new Random(0);
        foreach (int prompt in r.GetValue(prompts)!)
        {
            var (options, prediction) = offload.Resolve(r, folder, load.DType, device, prompt + softLength, steps, Console.Out, kvCache);
            var policy = options.Policy;
            OffloadFlags.Print(Console.Out, policy, prediction);
            var loadWatch = Stopwatch.StartNew();
            using var model = CommonOptions.LoadOffloaded(folder, load, options);
            Console.WriteLine($"{card} | {model.Info.ModelType} | {load.DType.ShortName()} | weights placed in {loadWatch.Elapsed.TotalSeconds:F1} s: " +
                $"GPU {Units.Bytes(model.WeightBytesOn(Tier.Gpu))}, CPU {Units.Bytes(model.WeightBytesOn(Tier.Cpu))}, disk {Units.Bytes(model.WeightBytesOn(Tier.Disk))}; " +
                $"device memory in use {DeviceReport.UsedBytes(device) / 1e9:F2} GB");
            IReadOnlyList<int> Random(int n) => Enumerable.Range(0, n).Select(_ => random.Next(model.Info.VocabSize)).ToArray();
            using var sparse = sparsity.Apply(r, common, model);
            using var soft = softPrompt.Load(r, model.TokenEmbeddingWidth);
            using var prompted = soft is null ? null : Tern.Prompting.PromptedModel.Create(model, soft);
            IStepModel stepped = prompted is null ? model : prompted;
            new Generator(stepped).GenerateTokens(Enumerable.Range(0, policy.GpuBatchSize).Select(_ => Random(Math.Min(prompt, 32))).ToArray(),
                new GenerationOptions { MaxNewTokens = 2, IgnoreEos = true, Cache = kvCache }); // warm-up
            var stepSeconds = TimeSteps(stepped, Enumerable.Range(0, policy.BlockSize).Select(_ => Random(prompt)).ToArray(), steps, kvPolicy, measureSteps);
            double prefillSeconds = stepSeconds[0];
            var decodeMeasured = stepSeconds.Skip(1).ToArray();
            double decodeSeconds = decodeMeasured.Sum() + (measureSteps > 0 ? decodeMeasured.Skip(2).Average() * (steps - 1 - decodeMeasured.Length) : 0);
            double measured = policy.BlockSize * steps / (prefillSeconds + decodeSeconds);
            double decodeTps = policy.BlockSize * (steps - 1) / decodeSeconds;
            string how = measureSteps > 0
                ? $"projected from the prefill and {decodeMeasured.Length} measured decode steps (mean {decodeMeasured.Skip(2).Average():F3} s after two warm steps; " +
                  $"first {decodeMeasured[0]:F3}, last {decodeMeasured[^1]:F3} s)"
                : "measured";
            Console.WriteLine($"{how}:   prefill {prefillSeconds:F2} s, decode {decodeSeconds:F2} s ({decodeTps:F2} tokens/s), " +
                $"throughput {measured:F2} tokens/s; predicted {prediction.TokensPerSecond:F2} ({measured / prediction.TokensPerSecond - 1:+0.0%;-0.0%} off); " +
                $"peak GPU placement {Units.Bytes(model.PeakGpuBytes)}, device memory in use {DeviceReport.UsedBytes(device) / 1e9:F2} GB");
            string rowLabel = $"{r.GetValue(label)} [offload {policy}; kv {kvPolicy.Policy} {r.GetValue(kv.Budget)} {kvPolicy.Bits}-bit; generation {measured:0.###} tok/s" +
                $"{(measureSteps > 0 ? $" projected from {decodeMeasured.Length} decode steps" : "")}; predicted {prediction.TokensPerSecond:0.###}]" +
                (soft is null ? "" : $" [soft prompt {soft.Length}]") + (sparse is null ? "" : $" [sparsity {r.GetValue(sparsity.Spec)}]");
            File.AppendAllText(StepsPath(r.GetValue(output)!), string.Concat(stepSeconds.Select((t, i) =>
                $"{Csv(rowLabel.Trim())},{prompt},{steps},{i},{F(t * 1e3)}\n")));
            rows.Add(string.Join(',', new[]
            {
                DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture), Csv(card), device.type.ToString().ToLowerInvariant(),
                Csv(folder + (r.GetValue(common.Dummy) ? " (dummy)" : "")), load.DType.ShortName(), policy.BlockSize.ToString(), prompt.ToString(), steps.ToString(),
                F(prefillSeconds * 1e3), F(decodeSeconds * 1e3 / (steps - 1)), F(decodeTps), F(DeviceReport.UsedBytes(device) / 1e9),
                "", "", Csv(rowLabel.Trim()),
            }));
        }
        Append(r.GetValue(output)!, rows);
        return 0;
    }

    /// <summary>Seconds of each step of one offloaded block (prefill first), the tokens streamed so each step ends at a host sync;
    /// with <paramref name="measureSteps"/> &gt; 0 the generation (caches sized for <paramref name="steps"/>) stops after that many
    /// decode steps.</summary>
    static List<double> TimeSteps(IStepModel model, IReadOnlyList<IReadOnlyList<int>> prompts, int steps, Caching.KvPolicyOptions policy, int measureSteps)
    {
        var options = new GenerationOptions { MaxNewTokens = steps, IgnoreEos = true }.WithKvPolicy(policy);
        var times = new List<double>();
        var watch = new Stopwatch();
        int tokens = 0;
        foreach (var _ in new Generator(new SetupExcluded(model, watch)).StreamAsync(prompts, options).ToBlockingEnumerable())
        {
            if (++tokens % prompts.Count != 0) continue; // a step's last token ends it
            times.Add(watch.Elapsed.TotalSeconds);
            watch.Restart();
            if (measureSteps > 0 && times.Count > measureSteps) break;
        }
        return times;
    }

    /// <summary>A model as the generator sees it, starting <paramref name="watch"/> once a runner and its caches are allocated:
    /// the prefill is timed from there, as the generator's own statistics time it.</summary>
    sealed class SetupExcluded(IStepModel inner, Stopwatch watch) : IStepModel
    {
        public ModelInfo Info => inner.Info;
        public Checkpoints.HfConfig Config => inner.Config;
        public TorchSharp.torch.Device Device => inner.Device;
        public ModelDType DType => inner.DType;

        public IStepRunner CreateRunner(int batchSize, int maxSequenceLength, int maxStepTokens, Caching.KvCacheConfig? cache)
        {
            var runner = inner.CreateRunner(batchSize, maxSequenceLength, maxStepTokens, cache);
            watch.Restart();
            return runner;
        }
    }

    /// <summary>The rows' file without -o: outside the checkout, whose bench/results.csv is tracked.</summary>
    static readonly string DefaultOutput = ResultsFolder.For(Path.Combine("bench", "results.csv"));

    static string StepsPath(string output)
    {
        string path = Path.ChangeExtension(output, null) + "-steps.csv";
        if (!File.Exists(path)) File.WriteAllText(path, "label,prompt,new_tokens,step,ms\n");
        return path;
    }

    const string Header = "date_utc,card,device,model,dtype,batch,prompt,new_tokens,prefill_ms,decode_ms_per_step,decode_tok_s,device_mem_gb,copy_TBps,floor_ms_per_step,label";

    static void Append(string path, List<string> rows)
    {
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        bool fresh = !File.Exists(path);
        // One write per call, so a crash never leaves half a row behind.
        File.AppendAllText(path, (fresh ? Header + "\n" : "") + string.Join("\n", rows) + "\n");
        Console.WriteLine($"appended {rows.Count} row(s) to {Path.GetFullPath(path)}");
    }

    internal static string F(double v) => double.IsNaN(v) ? "" : v.ToString("0.###", CultureInfo.InvariantCulture);
    static string Csv(string s) => s.Contains(',') || s.Contains('"') ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;
}
