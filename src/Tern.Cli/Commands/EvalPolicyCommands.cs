using System.CommandLine;
using System.Globalization;
using System.Text;
using Tern.Evaluation;
using Tern.Caching;
using Tern.Runtime;

namespace Tern.Cli.Commands;

/// <summary><c>tern eval stream</c> and <c>tern eval budget</c>: KV-cache policies on a long text (StreamingLLM's and H2O's
/// experiments), as a table on stdout and CSV + PNG files.</summary>
internal static class EvalPolicyCommands
{
    /// <summary>A policy as the evaluations name it: <c>NAME</c> or <c>NAME:BITS</c> (e.g. <c>h2o:4</c> = H2O over a 4-bit cache).</summary>
    internal sealed record PolicySpec(string Name, int Bits)
    {
        public static PolicySpec Parse(string text)
        {
            var parts = text.Trim().Split(':');
            int bits = 16;
            if (parts.Length > 2 || parts.Length == 2 && !int.TryParse(parts[1], out bits))
                throw new UsageException($"--policy '{text}': write NAME or NAME:BITS, e.g. sink or h2o:4.");
            var spec = new PolicySpec(parts[0], bits);
            spec.Options(KvBudget.OfTokens(1 << 20)).Validate(); // names the flag on a bad name or bit width
            return spec;
        }

        public KvPolicyOptions Options(KvBudget budget) => new() { Policy = Name, Budget = Name == "full" ? null : budget, Bits = Bits };

        public override string ToString() => Bits == 16 ? Name : $"{Name} {Bits}-bit";
    }

    static readonly Option<FileInfo> Text = new("--text") { Description = "UTF-8 text file to score.", Required = true };
    static Option<string[]> PolicyOption(string defaults) => new("--policy")
    {
        Description = $"Policies as NAME or NAME:BITS (full, window, window-recompute, sink, h2o; bits 16, 8, 4), comma-separated or repeated. Default: {defaults}.",
        AllowMultipleArgumentsPerToken = true,
        DefaultValueFactory = _ => defaults.Split(','),
    };
    static Option<int?> StartTokenOption() => new("--start-token")
    {
        Description = "Begin every stream or sequence with this token id (a model trained with tern train --start-token, e.g. its bos_token_id).",
    };
    /// <summary>The sequences with <paramref name="start"/> first, at the same length (the last token gives way).</summary>
    static IReadOnlyList<IReadOnlyList<int>> WithStartToken(IReadOnlyList<IReadOnlyList<int>> sequences, int? start) => start is { } s
        ? sequences.Select(q => (IReadOnlyList<int>)q.Take(q.Count - 1).Prepend(s).ToArray()).ToArray()
        : sequences;
    static Option<string> OutputOption(string name) => new("--output", "-o") { Description = $"Folder for {name}.csv and the PNG plots (default {DefaultOutput}).", DefaultValueFactory = _ => DefaultOutput };
    static readonly string DefaultOutput = ResultsFolder.For("eval");

    static IReadOnlyList<PolicySpec> Specs(string[] values) => values.SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries)).Select(PolicySpec.Parse).ToArray();

    static T[] List<T>(string text, string flag, Func<string, T> parse)
    {
        try { return text.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(s => parse(s.Trim())).ToArray(); }
        catch (FormatException) { throw new UsageException($"{flag} must be a comma-separated list of numbers (got '{text}')."); }
    }

    /// <summary>Refuses a budget ratio outside (0, 1] before anything loads, naming the flag that gave it.</summary>
    static void CheckRatios(IEnumerable<double> ratios)
    {
        try { foreach (double ratio in ratios) KvBudget.OfRatio(ratio); }
        catch (OptionException e) { throw new UsageException(e.Render(_ => "--budgets")); }
    }

    static IReadOnlyList<int> Tokens(ParseResult r, CommonOptions common, out Models.CausalLanguageModel model, out string folder)
    {
        string text = TextFiles.Read(r.GetValue(Text)!.FullName, "--text");
        var (loaded, tokenizer, dir) = common.Load(r, needTokenizer: true);
        (model, folder) = (loaded, dir);
        return tokenizer!.Encode(text, addSpecialTokens: false);
    }

    public static Command Stream()
    {
        var common = new CommonOptions();
        var policies = PolicyOption("full,window,window-recompute,sink");
        var caches = new Option<string>("--cache") { Description = "Cache sizes in tokens (sink: sinks + window), comma-separated.", DefaultValueFactory = _ => "256,1024" };
        var streams = new Option<int>("--streams") { Description = "Contiguous pieces of the text scored side by side.", DefaultValueFactory = _ => 8 };
        var perStream = new Option<int>("--tokens-per-stream") { Description = "Tokens per stream (default: the text split evenly).", };
        var recomputeTokens = new Option<int>("--recompute-tokens") { Description = "Tokens per stream for window-recompute, which re-runs its whole window every token (0 = as the others).", DefaultValueFactory = _ => 0 };
        var fullTokens = new Option<int>("--full-tokens") { Description = "Tokens per stream for the full cache, whose attention grows with the text (0 = as the others).", DefaultValueFactory = _ => 0 };
        var bucket = new Option<int>("--bucket") { Description = "Positions per reported bucket.", DefaultValueFactory = _ => 1024 };
        var startToken = StartTokenOption();
        var output = OutputOption("stream");
        var command = new Command("stream", "Perplexity by position over a long text fed token by token, per KV policy and cache size (StreamingLLM's experiment).")
            { Text, policies, caches, streams, perStream, recomputeTokens, fullTokens, bucket, startToken, output };
        common.AddTo(command);
        command.SetAction((r, cancellation) =>
        {
            var specs = Specs(r.GetValue(policies)!);
            int[] sizes = List(r.GetValue(caches)!, "--cache", s => int.Parse(s, CultureInfo.InvariantCulture));
            var tokens = Tokens(r, common, out var model, out string folder);
            using (model)
            {
                var rows = new List<(string Label, StreamingEvaluationResult Result)>();
                foreach (var spec in specs)
                    foreach (int size in spec.Name == "full" ? new[] { 0 } : sizes)
                    {
                        int limit = spec.Name switch { "window-recompute" => r.GetValue(recomputeTokens), "full" => r.GetValue(fullTokens), _ => 0 };
                        var options = new StreamingEvaluationOptions
                        {
                            Streams = r.GetValue(streams), BucketSize = r.GetValue(bucket),
                            TokensPerStream = limit > 0 ? limit : r.GetValue(perStream), StartToken = r.GetValue(startToken),
                        };
                        string label = size == 0 ? spec.ToString() : $"{spec} {size}";
                        var policy = spec.Options(KvBudget.OfTokens(Math.Max(size, 1))); // full ignores the budget
                        var result = StreamingEvaluation.Run(model, tokens, policy, options, new ConsoleProgress(label), cancellation);
                        Console.Error.WriteLine();
                        rows.Add((label, result));
                        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"{label}: perplexity {result.Perplexity:F2} over {result.BucketTokens.Sum():N0} tokens ({result.Streams} × {result.TokensPerStream:N0}), {result.Seconds:F0} s"));
                    }
                string dir = r.GetValue(output)!;
                Directory.CreateDirectory(dir);
                var csv = new StringBuilder("policy,bucket_start,bucket_end,tokens,mean_nll,perplexity\n");
                foreach (var (label, res) in rows)
                    for (int k = 0; k < res.BucketNll.Length; k++)
                        csv.Append(CultureInfo.InvariantCulture, $"{label},{k * res.BucketSize},{(k + 1) * res.BucketSize},{res.BucketTokens[k]},{res.BucketNll[k]:F5},{Math.Exp(res.BucketNll[k]):F3}\n");
                AtomicFile.Write(Path.Combine(dir, "stream.csv"), s => s.Write(Encoding.UTF8.GetBytes(csv.ToString())));
                DrawPlots(dir, $"{Path.GetFileName(folder)}, {r.GetValue(Text)!.Name}");
                Console.WriteLine("| policy | tokens | perplexity | first bucket | last bucket | worst bucket |");
                Console.WriteLine("|---|---|---|---|---|---|");
                foreach (var (label, res) in rows)
                {
                    var valid = res.BucketNll.Where(double.IsFinite).ToArray();
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {label} | {res.BucketTokens.Sum():N0} | {res.Perplexity:F2} | {Math.Exp(valid[0]):F2} | {Math.Exp(valid[^1]):F2} | {Math.Exp(valid.Max()):F2} |"));
                }
                Console.WriteLine($"wrote {Path.GetFullPath(Path.Combine(dir, "stream.csv"))} and stream.png");
            }
            return Task.FromResult(0);
        });
        return command;
    }

    public static Command Budget()
    {
        var common = new CommonOptions();
        var policies = PolicyOption("window,sink,h2o,h2o:4");
        var budgets = new Option<string>("--budgets") { Description = "KV budgets as fractions of the sequence, comma-separated.", DefaultValueFactory = _ => "1,0.5,0.2,0.1,0.05" };
        var sequences = new Option<int>("--sequences") { Description = "Sequences taken evenly spaced from the text.", DefaultValueFactory = _ => 16 };
        var length = new Option<int>("--length") { Description = "Tokens per sequence (default: the model's context)." };
        var startToken = StartTokenOption();
        var output = OutputOption("budget");
        var command = new Command("budget", "Perplexity and agreement with the full cache as the KV budget shrinks, per policy (H2O's experiment).")
            { Text, policies, budgets, sequences, length, startToken, output };
        common.AddTo(command);
        command.SetAction((r, cancellation) =>
        {
            var specs = Specs(r.GetValue(policies)!);
            double[] ratios = List(r.GetValue(budgets)!, "--budgets", s => double.Parse(s, CultureInfo.InvariantCulture));
            CheckRatios(ratios);
            var tokens = Tokens(r, common, out var model, out string folder);
            using (model)
            {
                var seqs = BudgetEvaluation.Sequences(tokens, r.GetValue(sequences), r.GetValue(length) is > 0 and var l ? l : model.Info.MaxPositions);
                seqs = WithStartToken(seqs, r.GetValue(startToken));
                var reference = BudgetEvaluation.Reference(model, seqs, new ConsoleProgress("full cache"), cancellation);
                Console.Error.WriteLine();
                var points = new List<BudgetPoint> { BudgetEvaluation.Run(model, seqs, reference, new KvPolicyOptions(), "full", 1, null, cancellation) };
                foreach (var spec in specs)
                    foreach (double ratio in ratios)
                    {
                        var policy = spec.Options(KvBudget.OfRatio(ratio));
                        var point = BudgetEvaluation.Run(model, seqs, reference, policy, spec.ToString(), ratio, new ConsoleProgress($"{spec} {ratio:P0}"), cancellation);
                        Console.Error.WriteLine();
                        points.Add(point);
                    }
                string dir = r.GetValue(output)!;
                Directory.CreateDirectory(dir);
                var csv = new StringBuilder("policy,budget,tokens,mean_nll,perplexity,agreement\n");
                foreach (var p in points)
                    csv.Append(CultureInfo.InvariantCulture, $"{p.Policy},{p.Budget},{p.Tokens},{p.MeanNll:F5},{p.Perplexity:F3},{p.Agreement:F4}\n");
                AtomicFile.Write(Path.Combine(dir, "budget.csv"), s => s.Write(Encoding.UTF8.GetBytes(csv.ToString())));
                var byPolicy = points.Skip(1).GroupBy(p => p.Policy).ToArray();
                DrawPlots(dir, $"{Path.GetFileName(folder)}, {seqs.Count} × {seqs[0].Count} tokens of {r.GetValue(Text)!.Name}");
                Console.WriteLine($"| policy | {string.Join(" | ", ratios.Select(x => x.ToString("P0", CultureInfo.InvariantCulture)))} |");
                Console.WriteLine($"|---|{string.Concat(ratios.Select(_ => "---|"))}");
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| full cache | {points[0].Perplexity:F2} (agreement 100%) |"));
                foreach (var g in byPolicy)
                    Console.WriteLine($"| {g.Key} | {string.Join(" | ", g.Select(p => string.Create(CultureInfo.InvariantCulture, $"{p.Perplexity:F2} ({p.Agreement:P1})")))} |");
                Console.WriteLine($"perplexity (agreement of the next-token argmax with the full cache); wrote {Path.GetFullPath(Path.Combine(dir, "budget.csv"))}, budget-ppl.png, budget-agreement.png");
            }
            return Task.FromResult(0);
        });
        return command;
    }

    public static Command Choice()
    {
        var common = new CommonOptions();
        var texts = new Option<FileInfo[]>("--text") { Description = "Held-out UTF-8 texts; each becomes a cloze task named after its file (repeatable).", Required = true, AllowMultipleArgumentsPerToken = true };
        var policies = PolicyOption("sink,h2o");
        var budgets = new Option<string>("--budgets") { Description = "KV budgets as fractions of context + choice, comma-separated.", DefaultValueFactory = _ => "1,0.5,0.2,0.1" };
        var items = new Option<int>("--items") { Description = "Questions per task.", DefaultValueFactory = _ => 100 };
        var contextChars = new Option<int>("--context-chars") { Description = "Characters of context before each blank.", DefaultValueFactory = _ => 2000 };
        var words = new Option<int>("--words") { Description = "Words per choice.", DefaultValueFactory = _ => 6 };
        var choices = new Option<int>("--choices") { Description = "Choices per question (one right).", DefaultValueFactory = _ => 4 };
        var seed = new Option<int>("--seed") { Description = "Seed of the question sampler.", DefaultValueFactory = _ => 1234 };
        var output = OutputOption("choice");
        var command = new Command("choice", "Multiple-choice accuracy (lm-eval style: summed log-likelihood of each choice) on cloze tasks from held-out text, per KV policy and budget.")
            { texts, policies, budgets, items, contextChars, words, choices, seed, output };
        common.AddTo(command);
        command.SetAction((r, cancellation) =>
        {
            var specs = Specs(r.GetValue(policies)!);
            double[] ratios = List(r.GetValue(budgets)!, "--budgets", s => double.Parse(s, CultureInfo.InvariantCulture));
            CheckRatios(ratios);
            var files = r.GetValue(texts)!;
            var tasks = files.Select(f => MultipleChoice.Cloze(Path.GetFileNameWithoutExtension(f.Name), TextFiles.Read(f.FullName, "--text"), r.GetValue(items),
                r.GetValue(contextChars), r.GetValue(words), r.GetValue(choices), r.GetValue(seed))).ToArray();
            var (model, tokenizer, folder) = common.Load(r, needTokenizer: true);
            using (model)
            {
                var rows = new List<(string Policy, double Budget, ChoiceResult Result)>();
                foreach (var task in tasks)
                {
                    rows.Add(("full", 1, MultipleChoice.Evaluate(model, tokenizer!, task, null, new ConsoleProgress($"{task.Name} full"), cancellation)));
                    Console.Error.WriteLine();
                    foreach (var spec in specs)
                        foreach (double ratio in ratios)
                        {
                            var policy = spec.Options(KvBudget.OfRatio(ratio));
                            rows.Add((spec.ToString(), ratio, MultipleChoice.Evaluate(model, tokenizer!, task, policy, new ConsoleProgress($"{task.Name} {spec} {ratio:P0}"), cancellation)));
                            Console.Error.WriteLine();
                        }
                }
                string dir = r.GetValue(output)!;
                Directory.CreateDirectory(dir);
                var csv = new StringBuilder("task,policy,budget,items,accuracy,accuracy_norm\n");
                foreach (var (policy, budget, res) in rows)
                    csv.Append(CultureInfo.InvariantCulture, $"{res.Task},{policy},{budget},{res.Items},{res.Accuracy:F4},{res.NormalizedAccuracy:F4}\n");
                AtomicFile.Write(Path.Combine(dir, "choice.csv"), s => s.Write(Encoding.UTF8.GetBytes(csv.ToString())));
                DrawPlots(dir, $"{Path.GetFileName(folder)}, {r.GetValue(choices)} choices, {r.GetValue(items)} questions per task");
                Console.WriteLine($"| task | policy | {string.Join(" | ", ratios.Select(x => x.ToString("P0", CultureInfo.InvariantCulture)))} |");
                Console.WriteLine($"|---|---|{string.Concat(ratios.Select(_ => "---|"))}");
                foreach (var g in rows.GroupBy(x => (x.Result.Task, x.Policy)))
                    Console.WriteLine($"| {g.Key.Task} | {g.Key.Policy} | {string.Join(" | ", g.Select(x => string.Create(CultureInfo.InvariantCulture, $"{x.Result.Accuracy:P1} ({x.Result.NormalizedAccuracy:P1})")))} |");
                Console.WriteLine($"accuracy (length-normalised accuracy); chance is {1.0 / r.GetValue(choices):P0}; wrote {Path.GetFullPath(Path.Combine(dir, "choice.csv"))} and choice.png");
            }
            return Task.FromResult(0);
        });
        return command;
    }

    public static Command Sinks()
    {
        var common = new CommonOptions();
        var sequences = new Option<int>("--sequences") { Description = "Sequences taken evenly spaced from the text.", DefaultValueFactory = _ => 8 };
        var length = new Option<int>("--length") { Description = "Tokens per sequence (default: the model's context)." };
        var first = new Option<int>("--first") { Description = "How many first tokens count as the sink.", DefaultValueFactory = _ => 1 };
        var from = new Option<int>("--from-query") { Description = "Only queries at this position or later count.", DefaultValueFactory = _ => 64 };
        var startToken = StartTokenOption();
        var command = new Command("sinks", "Per layer, the share of attention the first tokens of a sequence receive (StreamingLLM's attention sinks).")
            { Text, sequences, length, first, from, startToken };
        common.AddTo(command);
        command.SetAction(r =>
        {
            var tokens = Tokens(r, common, out var model, out string folder);
            using (model)
            {
                var seqs = BudgetEvaluation.Sequences(tokens, r.GetValue(sequences), r.GetValue(length) is > 0 and var l ? l : model.Info.MaxPositions);
                seqs = WithStartToken(seqs, r.GetValue(startToken));
                var report = AttentionSinks.Measure(model, seqs, r.GetValue(first), r.GetValue(from));
                Console.WriteLine($"{Path.GetFileName(folder)}: attention on the first {report.FirstTokens} token(s) from queries at positions ≥ {report.FromQuery}, " +
                                  $"{seqs.Count} × {seqs[0].Count} tokens of {r.GetValue(Text)!.Name}");
                Console.WriteLine($"| layer | share | × uniform ({report.UniformShare:P2}) |");
                Console.WriteLine("|---|---|---|");
                for (int i = 0; i < report.Share.Length; i++)
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {i} | {report.Share[i]:P2} | {report.Share[i] / report.UniformShare:F1} |"));
            }
            return 0;
        });
        return command;
    }

    /// <summary><c>tern eval plot DIR</c>: draws the plots of the CSVs in a results folder (the GPU machine's pack has no
    /// plotting natives, so evaluations run there are drawn where their CSVs come back).</summary>
    public static Command Plot()
    {
        var dir = new Argument<string>("folder") { Description = "Folder with stream.csv, budget.csv and/or choice.csv." };
        var title = new Option<string?>("--title") { Description = "Plot title (default: the folder's title.txt, else its name)." };
        var command = new Command("plot", "Draw the PNG plots of evaluation CSVs (stream.csv, budget.csv, choice.csv, ctp.csv) in a folder.") { dir, title };
        command.SetAction(r =>
        {
            string folder = r.GetValue(dir)!;
            if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"'{Path.GetFullPath(folder)}' does not exist.");
            string titleFile = Path.Combine(folder, "title.txt");
            DrawPlots(folder, r.GetValue(title) ?? (File.Exists(titleFile) ? File.ReadAllText(titleFile).Trim() : Path.GetFileName(Path.GetFullPath(folder))));
            return 0;
        });
        return command;
    }

    static List<string[]> ReadCsv(string path) => File.ReadAllLines(path).Skip(1).Where(l => l.Length > 0).Select(l => l.Split(',')).ToList();
    static double D(string s) => double.Parse(s, CultureInfo.InvariantCulture);

    /// <summary>Draws the plot of every evaluation CSV in <paramref name="dir"/>; without plotting natives, says how to draw them later.</summary>
    static void DrawPlots(string dir, string title)
    {
        AtomicFile.Write(Path.Combine(dir, "title.txt"), s => s.Write(Encoding.UTF8.GetBytes(title + "\n")));
        try
        {
            string stream = Path.Combine(dir, "stream.csv");
            if (File.Exists(stream)) // policy,bucket_start,bucket_end,tokens,mean_nll,perplexity
                LinePlot.Save(Path.Combine(dir, "stream.png"), $"{title}: NLL by position, text fed token by token",
                    "position in the stream (tokens)", "mean NLL (nats/token) = ln perplexity",
                    ReadCsv(stream).GroupBy(c => c[0]).Select(g => new PlotSeries(g.Key, g.Select(c => (D(c[1]) + D(c[2])) / 2).ToArray(), g.Select(c => D(c[4])).ToArray())));
            string ctp = Path.Combine(dir, "ctp.csv");
            if (File.Exists(ctp)) // model,text,prompt,scored_tokens,mean_nll,perplexity,released_perplexity; prompt "none", "own", "from-MODEL" or "init"
            {
                var rows = ReadCsv(ctp);
                var models = rows.Select(c => c[0]).Distinct().ToArray();
                // Per model and text: no prompt, and its own prompt or else a transferred one (one point each).
                var prompted = rows.Where(c => c[2] == "own" || c[2].StartsWith("from-", StringComparison.Ordinal))
                    .GroupBy(c => (c[0], c[1])).Select(g => g.FirstOrDefault(c => c[2] == "own") ?? g.First());
                LinePlot.Save(Path.Combine(dir, "ctp.png"), title, "model", "perplexity (log scale)",
                    rows.Where(c => c[2] == "none").Select(c => (Series: $"{c[1]}, no prompt", Row: c))
                        .Concat(prompted.Select(c => (Series: $"{c[1]}, soft prompt (own or transferred)", Row: c)))
                        .GroupBy(p => p.Series)
                        .Select(g => g.OrderBy(p => Array.IndexOf(models, p.Row[0])).ToArray())
                        .Select(g => new PlotSeries(g[0].Series, g.Select(p => (double)Array.IndexOf(models, p.Row[0])).ToArray(), g.Select(p => D(p.Row[5])).ToArray())),
                    logY: true, width: 1200, xCategories: models);
            }
            string budget = Path.Combine(dir, "budget.csv");
            if (File.Exists(budget)) // policy,budget,tokens,mean_nll,perplexity,agreement
            {
                var rows = ReadCsv(budget);
                var curves = rows.Where(c => c[0] != "full").GroupBy(c => c[0]).ToArray();
                string full = rows.FirstOrDefault(c => c[0] == "full") is { } f ? $" (full cache: {D(f[4]):F2})" : "";
                LinePlot.Save(Path.Combine(dir, "budget-ppl.png"), title + full, "KV budget (fraction of the sequence)", "perplexity",
                    curves.Select(g => new PlotSeries(g.Key, g.Select(c => D(c[1])).ToArray(), g.Select(c => D(c[4])).ToArray())), logX: true);
                LinePlot.Save(Path.Combine(dir, "budget-agreement.png"), title, "KV budget (fraction of the sequence)", "next-token argmax agreement with the full cache",
                    curves.Select(g => new PlotSeries(g.Key, g.Select(c => D(c[1])).ToArray(), g.Select(c => D(c[5])).ToArray())), logX: true);
            }
            string choice = Path.Combine(dir, "choice.csv");
            if (File.Exists(choice)) // task,policy,budget,items,accuracy,accuracy_norm
                LinePlot.Save(Path.Combine(dir, "choice.png"), $"{title}: cloze accuracy", "KV budget (fraction of context + choice)", "accuracy",
                    ReadCsv(choice).Where(c => c[1] != "full").GroupBy(c => $"{c[0]} {c[1]}")
                        .Select(g => new PlotSeries(g.Key, g.Select(c => D(c[2])).ToArray(), g.Select(c => D(c[4])).ToArray())), logX: true);
        }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException)
        {
            Console.Error.WriteLine($"note: plots not drawn here ({e.GetType().Name}); draw them with 'tern eval plot {dir}'");
        }
    }
}
