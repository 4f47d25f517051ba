using System.CommandLine;
using System.Diagnostics;
using Tern.Checkpoints;
using Tern.Runtime;
using Tern.Sparsity;
using Tern.Training;

namespace Tern.Cli.Commands;

/// <summary><c>tern sparsity collect|train</c>: DejaVu's contextual-sparsity predictors (activation data, then per-layer predictors).</summary>
internal static class SparsityCommand
{
    public static Command Create() => new("sparsity", "DejaVu contextual sparsity: collect activations, train per-layer neuron and head predictors.")
    {
        Collect(),
        Train(),
    };

    /// <summary><c>tern eval sparsity</c>: perplexity (and cloze multiple-choice accuracy) against the fraction of MLP neurons
    /// and attention heads computed, for the trained predictors (when the model folder has them), the oracle and random
    /// selection, with each rule's recall of the oracle's choice; a table, a CSV and a PNG per kind.</summary>
    internal static Command Evaluate()
    {
        var d = new SparsityEvaluationOptions();
        var common = new CommonOptions();
        var text = new Option<FileInfo>("--text") { Description = "UTF-8 text to score (and to draw cloze questions from).", Required = true };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Score at most the first N tokens of the text.", DefaultValueFactory = _ => 8192 };
        var mlpFractions = new Option<string>("--mlp") { Description = "Fractions of MLP neurons computed, comma-separated (ReLU MLPs; 'none' for no MLP rows).", DefaultValueFactory = _ => string.Join(',', d.MlpActive) };
        var headFractions = new Option<string>("--heads") { Description = "Fractions of attention heads computed, comma-separated ('none' for no head rows).", DefaultValueFactory = _ => string.Join(',', d.HeadsActive) };
        var combined = new Option<string>("--combined-heads") { Description = "Heads fraction paired with each --mlp fraction in the rows that sparsify both ('none': no such rows).", DefaultValueFactory = _ => d.CombinedHeads?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "none" };
        var choiceItems = new Option<int>("--choice-items") { Description = "Cloze questions drawn from the text (the true next 6 words among 4 spans of the same text; 0: none).", DefaultValueFactory = _ => 0 };
        var window = new Option<int?>("--window") { Description = "Tokens per perplexity window (default: the model's context, at most 1024)." };
        var stride = new Option<int?>("--stride") { Description = "How far each window moves (default: half the window)." };
        string defaultOutput = ResultsFolder.For("eval");
        var output = new Option<string>("--output", "-o") { Description = $"Folder for sparsity.csv and sparsity-{{mlp,heads,both}}.png (default {defaultOutput}).", DefaultValueFactory = _ => defaultOutput };
        var command = new Command("sparsity", "Perplexity against the fraction of MLP neurons and attention heads computed: learned predictors vs the oracle vs random selection.")
        {
            text, maxTokens, mlpFractions, headFractions, combined, choiceItems, window, stride, output,
        };
        common.AddTo(command);
        command.SetAction((r, cancellation) =>
        {
            var file = r.GetValue(text)!;
            if (!file.Exists) throw new FileNotFoundException($"--text: '{file.FullName}' does not exist.");
            var options = new SparsityEvaluationOptions
            {
                MlpActive = Fractions(r.GetValue(mlpFractions)!, "--mlp"), HeadsActive = Fractions(r.GetValue(headFractions)!, "--heads"),
                CombinedHeads = Fractions(r.GetValue(combined)!, "--combined-heads") switch
                {
                    [] => null,
                    [var h] => h,
                    _ => throw new UsageException($"--combined-heads is one fraction, or none (got '{r.GetValue(combined)}')."),
                },
            };
            if (r.GetValue(window) is { } w) options = options with { Perplexity = options.Perplexity with { Window = w } };
            if (r.GetValue(stride) is { } st) options = options with { Perplexity = options.Perplexity with { Stride = st } };
            string corpus = TextFiles.Read(file.FullName, "--text");
            var cloze = r.GetValue(choiceItems) is > 0 and var items ? Tern.Evaluation.MultipleChoice.Cloze(Path.GetFileNameWithoutExtension(file.Name), corpus, items) : null;
            var (model, tokenizer, folder) = common.Load(r, needTokenizer: true);
            using (model)
            {
                var ids = tokenizer!.Encode(corpus, addSpecialTokens: false).Take(r.GetValue(maxTokens)).ToArray();
                using var predictors = File.Exists(Path.Combine(SparsityPredictors.DirectoryOf(folder), SparsityPredictors.ManifestFile))
                    ? SparsityPredictors.LoadFor(model, folder) : null;
                if (predictors is null) Console.Error.WriteLine($"note: {SparsityPredictors.DirectoryOf(folder)} holds no predictors ('tern sparsity train'); oracle and random only.");
                if (!ModelIdentity.Of(model.Config).HasReluMlp) Console.Error.WriteLine("note: no ReLU MLP, so no MLP rows: heads only.");
                Console.WriteLine($"{"kind",-6} {"rule",-10} {"MLP",6} {"heads",6} {"perplexity",11} {"MLP recall",10} {"head recall",11}{(cloze is null ? "" : $" {"accuracy",8}")}");
                var rows = SparsityEvaluation.Run(model, ids, options, predictors, cloze is null ? null : (cloze, tokenizer),
                    new SyncProgress<SparsityEvaluationRow>(row => Console.WriteLine(
                        $"{SparsityEvaluation.Name(row.Kind),-6} {SparsityEvaluation.Name(row.Rule),-10} {row.MlpActive,6:P0} {row.HeadsActive,6:P0} {row.Perplexity,11:F3} " +
                        $"{row.MlpRecall,10:F3} {row.HeadRecall,11:F3}{(row.Accuracy is { } a ? $" {a,8:P1}" : "")}")), cancellation);
                string dir = r.GetValue(output)!;
                Directory.CreateDirectory(dir);
                SparsityEvaluation.SaveCsv(Path.Combine(dir, "sparsity.csv"), rows);
                var plots = SparsityEvaluation.SavePlots(dir, $"{Path.GetFileName(Path.GetFullPath(folder))}: DejaVu sparsity, {rows[0].ScoredTokens:N0} tokens of {file.Name}", rows);
                Console.WriteLine($"wrote {Path.GetFullPath(Path.Combine(dir, "sparsity.csv"))} and {string.Join(", ", plots.Select(Path.GetFileName))}");
            }
            return Task.FromResult(0);
        });
        return command;
    }

    /// <summary>Comma-separated fractions ("none": no fraction).</summary>
    static double[] Fractions(string list, string flag)
    {
        if (list.Trim().Equals("none", StringComparison.OrdinalIgnoreCase)) return Array.Empty<double>();
        try
        {
            return list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(f => double.Parse(f, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        }
        catch (FormatException)
        {
            throw new UsageException($"{flag} must be fractions such as 0.5,0.1, or none (got '{list}').");
        }
    }

    static Command Collect()
    {
        var d = new CollectOptions();
        var common = new CommonOptions();
        var text = new Option<FileInfo?>("--text") { Description = "UTF-8 text to run the model over." };
        var tokens = new Option<FileInfo?>("--tokens") { Description = "Token ids to run the model over (binary, see --token-format)." };
        var format = new Option<string>("--token-format") { Description = "u16 or i32 (with --tokens).", DefaultValueFactory = _ => "u16" };
        format.AcceptOnlyFromAmong("u16", "i32");
        var maxTokens = new Option<int>("--max-tokens") { Description = "Token positions recorded per layer (the first N of the corpus).", DefaultValueFactory = _ => d.MaxTokens };
        var seq = new Option<int>("--seq-len") { Description = "Tokens per forward window.", DefaultValueFactory = _ => d.SequenceLength };
        var batch = new Option<int>("--batch-size") { Description = "Windows per forward pass.", DefaultValueFactory = _ => d.BatchSize };
        var headsOnly = new Option<bool>("--heads-only") { Description = "Record attention heads only (required for SwiGLU/GELU models: their neurons are never exactly off)." };
        var output = new Option<string>("--output", "-o") { Description = "Folder for activations.json and layer-NNN.safetensors.", Required = true };
        var command = new Command("collect", "Run a model over a corpus and record, per layer, its input, which MLP neurons fire and each head's output norm.")
        {
            text, tokens, format, maxTokens, seq, batch, headsOnly, output,
        };
        common.AddTo(command);
        command.SetAction((r, cancellation) =>
        {
            var (textFile, tokenFile) = (r.GetValue(text), r.GetValue(tokens));
            if ((textFile is null) == (tokenFile is null)) throw new UsageException("give exactly one of --text and --tokens.");
            var input = (textFile ?? tokenFile)!;
            if (!input.Exists) throw new FileNotFoundException($"{(textFile is null ? "--tokens" : "--text")}: '{input.FullName}' does not exist.");
            var options = new CollectOptions
            {
                MaxTokens = r.GetValue(maxTokens), SequenceLength = r.GetValue(seq), BatchSize = r.GetValue(batch), Mlp = !r.GetValue(headsOnly),
            };
            var clock = Stopwatch.StartNew();
            var (model, tokenizer, folder) = common.Load(r, needTokenizer: textFile is not null);
            using (model)
            {
                IReadOnlyList<int> ids;
                if (tokenizer is not null) ids = tokenizer.Encode(TextFiles.Read(input.FullName, "--text"), addSpecialTokens: false);
                else
                {
                    var stream = TokenStream.Load(input.FullName, r.GetValue(format) == "i32" ? TokenFileFormat.Int32 : TokenFileFormat.UInt16, model.Info.VocabSize);
                    int t = Math.Min(options.SequenceLength, model.Info.MaxPositions);
                    int windows = Math.Min((stream.Count - 1) / t, (options.MaxTokens + t - 1) / t);
                    if (windows < 1) throw new ArgumentException($"--tokens: {stream.Count} tokens, fewer than one window of {t}; use a smaller --seq-len.");
                    using var window = stream.FixedBatch(0, windows, t, TorchSharp.torch.CPU).Inputs;
                    ids = window.data<long>().Select(x => (int)x).ToArray();
                }
                using var data = ActivationCollector.Collect(model, ids, options, new ConsoleProgress("collecting"), cancellation);
                Console.Error.WriteLine();
                string dir = r.GetValue(output)!;
                data.Save(dir);
                var m = data.Manifest;
                Console.WriteLine($"{folder}: {m.Tokens:N0} tokens × {m.Model.Layers} layers (windows of {m.SequenceLength}) → {Path.GetFullPath(dir)}; " +
                    $"{(m.Mlp ? $"MLP masks of {m.Model.IntermediateSize} neurons and " : "")}{m.Model.Heads} head norms per token ({clock.Elapsed.TotalSeconds:F1} s)");
                if (m.Mlp)
                    for (int i = 0; i < data.Layers.Count; i++)
                    {
                        double active = data.Layers[i].MlpActive!.to(TorchSharp.torch.ScalarType.Float32).mean().item<float>();
                        Console.WriteLine($"  layer {i}: {active:P1} of MLP neurons fire ({1 - active:P1} sparse)");
                    }
            }
            return Task.FromResult(0);
        });
        return command;
    }

    static Command Train()
    {
        var d = new PredictorTrainingOptions();
        var model = new Option<string>("--model", "-m") { Description = "The model folder the activations came from; predictors are written to its sparsity/ folder.", Required = true };
        var data = new Option<string>("--data") { Description = "Folder written by 'tern sparsity collect'.", Required = true };
        var rank = new Option<int?>("--rank") { Description = "Rank of the MLP predictors (default: the paper's 1000 at width 12288, scaled to the model and rounded up to a multiple of 8; at least 64)." };
        var headRank = new Option<int?>("--head-rank") { Description = "Rank of the head predictors (default: 512 at width 12288, scaled; at least 16, at most the heads)." };
        var epochs = new Option<int>("--epochs") { Description = "Most passes over the data (early stop after 5 without better recall).", DefaultValueFactory = _ => d.Epochs };
        var lr = new Option<double>("--lr") { Description = "AdamW learning rate, MLP predictors.", DefaultValueFactory = _ => d.LearningRate };
        var headLr = new Option<double>("--head-lr") { Description = "AdamW learning rate, head predictors.", DefaultValueFactory = _ => d.HeadLearningRate };
        var headFraction = new Option<double>("--head-fraction") { Description = "Share of heads labelled active per token (top by output norm).", DefaultValueFactory = _ => d.HeadFraction };
        var batch = new Option<int>("--batch-size") { Description = "Token rows per step.", DefaultValueFactory = _ => d.BatchSize };
        var headsOnly = new Option<bool>("--heads-only") { Description = "Train head predictors only." };
        var sameLayer = new Option<bool>("--same-layer") { Description = "Pair each layer's predictors with its own input (the reference MLP script) instead of the previous layer's (lookahead)." };
        var mlpInput = new Option<bool>("--mlp-input") { Description = "MLP predictors read the residual after attention (the MLP block's input, as the reference's MLP training) instead of the layer's input; with lookahead layer ℓ's predicts ℓ+1." };
        var device = new Option<string>("--device") { Description = "cpu, cuda or auto.", DefaultValueFactory = _ => "auto" };
        device.AcceptOnlyFromAmong("cpu", "cuda", "auto");
        var command = new Command("train", "Train per-layer low-rank predictors of firing MLP neurons and active heads (weighted BCE, lookahead).")
        {
            model, data, rank, headRank, epochs, lr, headLr, headFraction, batch, headsOnly, sameLayer, mlpInput, device,
        };
        command.SetAction((r, cancellation) =>
        {
            string folder = r.GetValue(model)!, dataDir = r.GetValue(data)!;
            var identity = ModelIdentity.Of(HfConfig.Load(folder));
            using var activations = ActivationData.Load(dataDir);
            activations.Manifest.Model.RequireSame(identity, Path.Combine(dataDir, ActivationData.ManifestFile), "the activations were",
                $"collect them again with 'tern sparsity collect --model {folder}'");
            var options = new PredictorTrainingOptions
            {
                MlpRank = r.GetValue(rank), HeadRank = r.GetValue(headRank), Epochs = r.GetValue(epochs), LearningRate = r.GetValue(lr),
                HeadLearningRate = r.GetValue(headLr), HeadFraction = r.GetValue(headFraction), BatchSize = r.GetValue(batch),
                Mlp = !r.GetValue(headsOnly), Lookahead = !r.GetValue(sameLayer), MlpReadsMlpInput = r.GetValue(mlpInput),
                Device = ComputeOptions.ResolveDevice(ComputeOptions.ParseDevice(r.GetValue(device)!)),
            };
            var clock = Stopwatch.StartNew();
            // Synchronous reporting: a line per predictor as it finishes.
            var progress = new SyncProgress<(int Layer, string Kind, PredictorStats Stats)>(p => Console.WriteLine(
                $"layer {p.Layer,2} {p.Kind,-5} (reads layer {p.Stats.SourceLayer}, rank {p.Stats.Rank}, {p.Stats.Epochs} epochs): " +
                $"recall {p.Stats.Recall:F3}  precision {p.Stats.Precision:F3}  recall@{p.Stats.K} {p.Stats.RecallAtK:F3}  " +
                $"active {p.Stats.TrueActive:F1}, predicted {p.Stats.PredictedActive:F1}  loss {p.Stats.TrainLoss[0]:F4} → {p.Stats.TrainLoss[^1]:F4}"));
            using var predictors = PredictorTrainer.Train(activations, options, progress, cancellation);
            predictors.Save(folder);
            var m = predictors.Manifest;
            Console.WriteLine($"wrote {Path.GetFullPath(SparsityPredictors.DirectoryOf(folder))} ({SparsityPredictors.WeightsFile}, {SparsityPredictors.ManifestFile}): " +
                $"{m.Model.Layers} layers, {(m.Mlp ? $"MLP rank {m.MlpRank}, " : "heads only, ")}head rank {m.HeadRank}, " +
                $"{(m.Lookahead ? "lookahead" : "same-layer")} pairing{(m.MlpReadsMlpInput ? ", MLP predictors on the MLP input" : "")}, {m.Tokens:N0} tokens ({clock.Elapsed.TotalSeconds:F1} s)");
            return Task.FromResult(0);
        });
        return command;
    }
}
