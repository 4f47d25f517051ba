using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Tern.Generation;
using Tern.Server;
using Tern.Serving;

namespace Tern.Cli.Commands;

/// <summary><c>tern bench serve</c>: aggregate tokens/s of the HTTP server against the number of concurrent streaming clients
/// (loopback only), against three baselines: one stream through the generator, a static batch of the same prompts through
/// the generator, and the in-process engine under the same load; writes results.csv and results.md.</summary>
internal static class ServeBenchCommand
{
    static readonly string[] Prompts =
    {
        "A dictionary is", "The word", "Python is a programming language that", "In the beginning", "Once upon a time",
        "The function returns", "To be or not to be", "A fortune cookie says",
    };

    public static Command Create()
    {
        var common = new CommonOptions();
        var clients = new Option<int[]>("--clients", "-c") { Description = "Concurrent streaming clients (comma-separated).", DefaultValueFactory = _ => new[] { 1, 4, 16, 64 }, CustomParser = BenchCommand.ParseInts };
        var maxTokens = new Option<int>("--max-tokens", "-n") { Description = "Tokens per request (EOS ignored).", DefaultValueFactory = _ => 64 };
        var requests = new Option<int>("--requests") { Description = "Requests per client, one after the other.", DefaultValueFactory = _ => 2 };
        var output = new Option<string>("--output", "-o") { Description = $"Folder for results.csv and results.md (default {DefaultOutput}).", DefaultValueFactory = _ => DefaultOutput };
        var kvMix = new Option<string?>("--kv-mix")
        {
            Description = "Also run the engine with clients cycling through these KV policies, POLICY[:BUDGET] comma-separated " +
                "(e.g. full,sink:256,h2o:0.2): the cost of pools of several policies stepping side by side against all-full.",
        };
        var command = new Command("serve", "Aggregate tokens/s of 'tern serve' against the number of concurrent streaming clients (loopback).") { clients, maxTokens, requests, output, kvMix };
        common.AddTo(command);
        command.SetAction((r, cancellation) => RunAsync(r, common, clients, maxTokens, requests, output, kvMix, cancellation));
        return command;
    }

    /// <param name="Engine">What the engine did for the row (null: not the engine).</param>
    sealed record Row(string Mode, int Clients, int Requests, long Tokens, double Seconds, double MeanFirstTokenMs, double MeanRequestSeconds, EngineWork? Engine = null)
    {
        long Steps => Engine?.Steps ?? 0;
        public double TokensPerSecond => Tokens / Seconds;
        /// <summary>Sequences a decode step advanced on average (each request's first token comes from its prefill).</summary>
        public double RowsPerStep => Steps > 0 ? (double)(Tokens - Requests) / Steps : double.NaN;
        public double MsPerStep => Steps > 0 ? Seconds * 1000 / Steps : double.NaN;
    }

    static async Task<int> RunAsync(ParseResult r, CommonOptions common, Option<int[]> clientsOption, Option<int> maxTokensOption,
        Option<int> requestsOption, Option<string> outputOption, Option<string?> kvMixOption, CancellationToken cancellation)
    {
        int maxTokens = r.GetValue(maxTokensOption), perClient = r.GetValue(requestsOption);
        if (maxTokens < 1 || perClient < 1) throw new UsageException("--max-tokens and --requests must be at least 1.");
        var mix = r.GetValue(kvMixOption) is { } spec ? ParseMix(spec) : null;
        int[] clientCounts = r.GetValue(clientsOption)!;
        var (model, tokenizer, folder) = common.Load(r, needTokenizer: true);
        using (model)
        {
            var rows = new List<Row>();
            // Baseline: one stream through the generator, no server.
            var generator = new Generator(model, tokenizer);
            var options = new GenerationOptions { MaxNewTokens = maxTokens, IgnoreEos = true };
            generator.Generate(new[] { Prompts[0] }, options with { MaxNewTokens = 2 }, cancellation);
            var watch = Stopwatch.StartNew();
            long baseline = 0;
            for (int i = 0; i < perClient; i++) baseline += generator.Generate(new[] { Prompts[i % Prompts.Length] }, options, cancellation).Sequences[0].Tokens.Count;
            rows.Add(new Row("generator", 1, perClient, baseline, watch.Elapsed.TotalSeconds, double.NaN, watch.Elapsed.TotalSeconds / perClient));
            Print(rows[^1]);

            using var engine = ServingEngine.Start(model, tokenizer, new ServingOptions { MaxBatchSize = clientCounts.Max(), MaxNewTokens = maxTokens });
            await using var server = await TernServer.StartAsync(engine, new ServerOptions { Port = 0 }, cancellation);
            using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(10) };
            await Stream(http, server.Address, Prompts[0], 2, cancellation); // warm-up
            foreach (int clients in clientCounts)
            {
                // A static batch of the same prompts through the generator, the engine alone (in process), then the same
                // load through HTTP.
                watch.Restart();
                long staticTokens = 0;
                for (int i = 0; i < perClient; i++)
                    staticTokens += generator.Generate(Enumerable.Range(0, clients).Select(c => Prompts[(c + i) % Prompts.Length]).ToArray(), options, cancellation)
                        .Sequences.Sum(x => x.Tokens.Count);
                rows.Add(new Row("static batch", clients, clients * perClient, staticTokens, watch.Elapsed.TotalSeconds, double.NaN, watch.Elapsed.TotalSeconds / perClient));
                Print(rows[^1]);
                var stats = engine.Stats;
                watch.Restart();
                var direct = await Task.WhenAll(Enumerable.Range(0, clients).Select(async c =>
                {
                    long tokens = 0;
                    for (int i = 0; i < perClient; i++)
                        tokens += (await engine.Submit(Prompts[(c + i) % Prompts.Length], options, cancellation).Completion).Tokens.Count;
                    return tokens;
                }));
                rows.Add(new Row("engine", clients, clients * perClient, direct.Sum(), watch.Elapsed.TotalSeconds, double.NaN, double.NaN, await WorkSince(engine, stats)));
                Print(rows[^1]);
                if (mix is not null)
                {
                    stats = engine.Stats;
                    watch.Restart();
                    var mixed = await Task.WhenAll(Enumerable.Range(0, clients).Select(async c =>
                    {
                        long tokens = 0;
                        for (int i = 0; i < perClient; i++)
                            tokens += (await engine.Submit(Prompts[(c + i) % Prompts.Length], options.WithKvPolicy(mix[c % mix.Length]), cancellation).Completion).Tokens.Count;
                        return tokens;
                    }));
                    rows.Add(new Row("engine mixed", clients, clients * perClient, mixed.Sum(), watch.Elapsed.TotalSeconds, double.NaN, double.NaN, await WorkSince(engine, stats)));
                    Print(rows[^1]);
                }
                stats = engine.Stats;
                watch.Restart();
                var results = await Task.WhenAll(Enumerable.Range(0, clients).Select(async c =>
                {
                    var own = new List<(int Tokens, double FirstMs, double Seconds)>();
                    for (int i = 0; i < perClient; i++) own.Add(await Stream(http, server.Address, Prompts[(c + i) % Prompts.Length], maxTokens, cancellation));
                    return own;
                }));
                var all = results.SelectMany(x => x).ToArray();
                rows.Add(new Row("server", clients, all.Length, all.Sum(x => (long)x.Tokens), watch.Elapsed.TotalSeconds, all.Average(x => x.FirstMs), all.Average(x => x.Seconds), await WorkSince(engine, stats)));
                Print(rows[^1]);
            }
            Write(r.GetValue(outputOption)!, folder, model, maxTokens, rows);
            return 0;
        }
    }

    /// <summary>What the engine did for a row: decode steps, prefill passes and the scheduler time they took, graph captures.</summary>
    sealed record EngineWork(long Steps, long Prefills, double PrefillSeconds, long Captures);

    /// <summary>The engine's work since <paramref name="before"/>, once it is idle (stats are published at step boundaries: the
    /// last completion can be seen before the boundary that follows it).</summary>
    static async Task<EngineWork> WorkSince(ServingEngine engine, ServingStats before)
    {
        for (int i = 0; i < 100 && engine.Stats.Running > 0; i++) await Task.Delay(10);
        var now = engine.Stats;
        return new(now.Steps - before.Steps, now.Prefills - before.Prefills, now.PrefillSeconds - before.PrefillSeconds, now.GraphCaptures - before.GraphCaptures);
    }

    /// <summary>The policies of <c>--kv-mix</c>: POLICY[:BUDGET], comma-separated (sink keeps its default sinks).</summary>
    static Caching.KvPolicyOptions[] ParseMix(string spec) => spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
        .Select(item =>
        {
            var parts = item.Split(':', 2);
            var policy = Caching.KvPolicyOptions.Parse(parts[0], parts.Length > 1 ? parts[1] : null, null, null, null, null);
            policy.Validate(); // before the model loads
            return policy;
        }).ToArray();

    /// <summary>One streaming completion: completion tokens (from the usage chunk), time to the first text, total time.</summary>
    static async Task<(int Tokens, double FirstMs, double Seconds)> Stream(HttpClient http, Uri server, string prompt, int maxTokens, CancellationToken cancellation)
    {
        var watch = Stopwatch.StartNew();
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(server, "/v1/completions"))
        {
            Content = JsonContent.Create(new
            {
                model = "tern", prompt, max_tokens = maxTokens, temperature = 0, ignore_eos = true, stream = true,
                stream_options = new { include_usage = true },
            }),
        };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellation);
        response.EnsureSuccessStatusCode();
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancellation), Encoding.UTF8);
        double first = double.NaN;
        int tokens = 0;
        while (await reader.ReadLineAsync(cancellation) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
            using var chunk = JsonDocument.Parse(line[6..]);
            if (double.IsNaN(first)) first = watch.Elapsed.TotalMilliseconds;
            if (chunk.RootElement.TryGetProperty("usage", out var usage)) tokens = usage.GetProperty("completion_tokens").GetInt32();
        }
        return (tokens, first, watch.Elapsed.TotalSeconds);
    }

    static void Print(Row row) => Console.WriteLine(
        $"{row.Mode,-12} clients {row.Clients,3}: {row.Requests,4} requests, {row.Tokens,6} tokens in {row.Seconds,7:F2} s = {row.TokensPerSecond,8:F1} tok/s" +
        $" (first token {row.MeanFirstTokenMs:F0} ms, request {row.MeanRequestSeconds:F2} s" +
        (row.Engine is { } e ? $"; {e.Steps} steps, {row.RowsPerStep:F1} rows and {row.MsPerStep:F3} ms a step; {e.Prefills} prefills, {e.PrefillSeconds:F2} s; {e.Captures} graph captures)" : ")"));

    static readonly string DefaultOutput = ResultsFolder.For("serving");

    static void Write(string dir, string folder, Models.CausalLanguageModel model, int maxTokens, List<Row> rows)
    {
        Directory.CreateDirectory(dir);
        string F(double v) => BenchCommand.F(v);
        var csv = new StringBuilder("mode,clients,requests,completion_tokens,seconds,aggregate_tok_s,mean_first_token_ms,mean_request_s,engine_steps,rows_per_step,ms_per_step,prefills,prefill_s,graph_captures\n");
        foreach (var x in rows) csv.AppendLine(string.Join(',', x.Mode, x.Clients, x.Requests, x.Tokens, F(x.Seconds), F(x.TokensPerSecond), F(x.MeanFirstTokenMs), F(x.MeanRequestSeconds),
            x.Engine?.Steps ?? 0, F(x.RowsPerStep), F(x.MsPerStep), x.Engine?.Prefills ?? 0, F(x.Engine?.PrefillSeconds ?? double.NaN), x.Engine?.Captures ?? 0));
        File.WriteAllText(Path.Combine(dir, "results.csv"), csv.ToString());
        string device = $"{Runtime.DeviceReport.Name(model.Device)}, {model.DType.ToString().ToLowerInvariant()}";
        var md = new StringBuilder($"`tern bench serve` on {folder} ({device}), {maxTokens} tokens per request (EOS ignored), streaming over loopback HTTP, " +
            $"{DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture)} UTC.\n\n");
        md.AppendLine("| mode | clients | requests | tokens | seconds | aggregate tok/s | mean first token (ms) | mean request (s) | engine steps | rows a step | ms a step | prefills (s) | graph captures |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var x in rows) md.AppendLine($"| {x.Mode} | {x.Clients} | {x.Requests} | {x.Tokens} | {x.Seconds:F2} | {x.TokensPerSecond:F1} | {(double.IsNaN(x.MeanFirstTokenMs) ? "—" : x.MeanFirstTokenMs.ToString("F0", CultureInfo.InvariantCulture))} | {(double.IsNaN(x.MeanRequestSeconds) ? "—" : x.MeanRequestSeconds.ToString("F2", CultureInfo.InvariantCulture))} | " +
            (x.Engine is { } e ? FormattableString.Invariant($"{e.Steps} | {x.RowsPerStep:F1} | {x.MsPerStep:F3} | {e.Prefills} ({e.PrefillSeconds:F2}) | {e.Captures} |") : "— | — | — | — | — |"));
        File.WriteAllText(Path.Combine(dir, "results.md"), md.ToString());
        Console.WriteLine($"wrote {Path.GetFullPath(Path.Combine(dir, "results.csv"))} and results.md");
    }
}
