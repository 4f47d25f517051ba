using System.CommandLine;
using System.Runtime.InteropServices;
using Tern.Models;
using Tern.Offloading;
using Tern.Runtime;
using Tern.Serving;
using Tern.Tokenization;
using Tern.Server;

namespace Tern.Cli.Commands;

/// <summary><c>tern serve</c>: an OpenAI-compatible HTTP server with continuous batching.</summary>
internal static class ServeCommand
{
    /// <summary>The longest prompt an offloaded server plans for when --max-prompt-tokens is not given (FlexGen's benchmark prompt).</summary>
    const int DefaultOffloadPrompt = 512;

    public static Command Create()
    {
        var common = new CommonOptions();
        var flags = new ServeFlags();
        var offload = new OffloadFlags();
        var sparsity = new SparsityFlags();
        var softPrompts = new ServedSoftPromptsFlag();
        var apiKey = new Option<string?>("--api-key") { Description = "Require 'Authorization: Bearer KEY' on /v1 requests (default: the TERN_API_KEY variable, else none)." };
        var drain = new Option<double>("--drain-timeout")
        {
            Description = "On SIGTERM or Ctrl+C: refuse new requests (503) and let running ones finish for at most this many seconds, then end " +
                "the rest with an error and exit 0 (a second signal stops at once).",
            DefaultValueFactory = _ => 30,
        };
        drain.Validators.Add(v => { if (!(v.GetValueOrDefault<double>() >= 0)) v.AddError("--drain-timeout must be >= 0 seconds."); });
        var command = new Command(Name, "Serve a model over an OpenAI-compatible HTTP API (completions, chat, streaming) with continuous batching.") { apiKey, drain };
        common.AddTo(command);
        flags.AddTo(command);
        offload.AddTo(command);
        sparsity.AddTo(command);
        softPrompts.AddTo(command);
        command.SetAction((r, _) => RunAsync(r, common, flags, offload, sparsity, softPrompts, apiKey, drain));
        return command;
    }

    /// <summary>The soft prompts served, for the start-up line: ", soft prompt of 20 vectors before every request, soft prompts
    /// by body field soft_prompt: a (20), b (8)".</summary>
    static string SoftPromptsNote(ServingEngine engine)
    {
        var prompts = engine.SoftPrompts;
        if (prompts.Count == 0) return "";
        string note = prompts.TryGetValue(ServingOptions.DefaultSoftPrompt, out int n) ? $", soft prompt of {n} vectors before every request" : "";
        var named = prompts.Where(p => p.Key.Length > 0).Select(p => $"{p.Key} ({p.Value})").ToArray();
        return named.Length == 0 ? note : $"{note}, soft prompts by body field soft_prompt: {string.Join(", ", named)}";
    }

    /// <summary>The command's name: it handles termination signals itself (<see cref="Program"/> leaves them to it), to drain.</summary>
    public const string Name = "serve";

    static async Task<int> RunAsync(ParseResult r, CommonOptions common, ServeFlags flags, OffloadFlags offload, SparsityFlags sparsity,
        ServedSoftPromptsFlag softPromptsFlag, Option<string?> apiKey, Option<double> drainTimeout)
    {
        // First SIGTERM / SIGINT / SIGQUIT: drain; a second one: stop now. Cancelling the signal keeps the runtime from
        // exiting under the requests in flight (which reached clients as libtorch asserts, exit 143).
        using var stop = new CancellationTokenSource();
        using var hurry = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            if (stop.IsCancellationRequested) hurry.Cancel();
            else stop.Cancel();
        }
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var quit = PosixSignalRegistration.Create(PosixSignal.SIGQUIT, OnSignal);
        var cancellation = stop.Token;
        var serving = flags.Serving(r);
        var server = flags.Server(r, common) with { ApiKey = r.GetValue(apiKey) ?? Environment.GetEnvironmentVariable("TERN_API_KEY") };
        server.Validate();
        IStepModel model;
        TernTokenizer tokenizer;
        string folder, mode = "continuous batching";
        if (offload.Enabled(r))
        {
            // FlexGen's throughput mode: blocks of gbs x ngb requests, planned for the longest prompt and max_tokens served (after
            // the longest soft prompt's entries, which a block's caches hold first).
            ModelLoadOptions load;
            (folder, load) = common.LoadOptions(r);
            tokenizer = TernTokenizer.Load(folder);
            int prompt = serving.MaxPromptTokens > 0 ? serving.MaxPromptTokens : DefaultOffloadPrompt;
            var (options, prediction) = offload.Resolve(r, folder, load.DType, ComputeOptions.ResolveDevice(load.Device),
                prompt + softPromptsFlag.LongestLength(r), serving.MaxNewTokens, Console.Error);
            OffloadFlags.Print(Console.Error, options.Policy, prediction);
            if (r.GetValue(flags.MaxBatch) is { } batch && batch > options.Policy.BlockSize)
                throw new UsageException($"--max-batch {batch} exceeds the offloaded block of gbs x ngb = {options.Policy.BlockSize} sequences ({options.Policy}); " +
                    "lower it, or choose a policy with a larger block.");
            serving = serving with { MaxBatchSize = r.GetValue(flags.MaxBatch) ?? options.Policy.BlockSize, MaxPromptTokens = prompt };
            serving.Validate();
            model = CommonOptions.LoadOffloaded(folder, load, options);
            mode = $"offloaded, blocks of {options.Policy.BlockSize}";
        }
        else
        {
            Console.Error.WriteLine($"loading {common.ResolveModelFolder(r)} ...");
            var (inMemory, loaded, path) = common.Load(r, needTokenizer: true);
            (model, tokenizer, folder) = (inMemory, loaded!, path);
        }
        using var disposeModel = model as IDisposable;
        using var sparse = model switch
        {
            CausalLanguageModel inMemory => sparsity.Apply(r, common, inMemory),
            OffloadedModel offloaded => sparsity.Apply(r, common, offloaded),
            _ => null,
        };
        var softPrompts = softPromptsFlag.Load(r, model switch
        {
            CausalLanguageModel inMemory => inMemory.TokenEmbeddingWidth,
            OffloadedModel offloaded => offloaded.TokenEmbeddingWidth,
            _ => throw new InvalidOperationException($"tern serve loads a model in memory or offloaded, not a {model.GetType().Name}."),
        });
        ServingEngine engine;
        try
        {
            // The engine copies the prompts and prefills them once.
            engine = ServingEngine.Start(model, tokenizer, softPrompts.Count == 0 ? serving : serving with { SoftPrompts = softPrompts });
        }
        finally
        {
            foreach (var prompt in softPrompts.Values) prompt.Dispose();
        }
        using (engine)
        {
            await using var host = await TernServer.StartAsync(engine, server, cancellation);
            Console.Error.WriteLine($"serving {folder} as '{server.ModelId}' ({model.Info.ModelType}, {model.DType.ToString().ToLowerInvariant()} on " +
                $"{model.Device.type.ToString().ToLowerInvariant()}, {mode}) at {host.Address}v1 — batch {serving.MaxBatchSize}, queue {serving.MaxQueue}, " +
                $"prompt <= {engine.MaxPromptTokens} tokens, max_tokens <= {serving.MaxNewTokens}{SoftPromptsNote(engine)}{(server.ApiKey is null ? "" : ", API key required")}; Ctrl+C stops.");
            try
            {
                await Task.Delay(Timeout.Infinite, cancellation);
            }
            catch (OperationCanceledException)
            {
            }
            var deadline = TimeSpan.FromSeconds(r.GetValue(drainTimeout));
            Console.Error.WriteLine($"stopping: new requests get 503; {engine.Outstanding} running or waiting may finish within {deadline.TotalSeconds:0.#} s (a second signal stops now).");
            bool drained = await engine.DrainAsync(deadline, hurry.Token);
            if (!drained) Console.Error.WriteLine($"stopping: {engine.Outstanding} request(s) did not finish; they end as unavailable (503, or a service_unavailable error event in a stream).");
            engine.Dispose(); // ends what is left (unavailable): their clients get a service_unavailable error object, their streams then [DONE]
            await host.DisposeAsync(); // the HTTP responses finish, then the listener closes
            Console.Error.WriteLine("stopped.");
        }
        return 0;
    }
}

/// <summary>The serving limits and listening flags shared by <c>tern serve</c> and <c>tern bench serve</c>, checked while
/// parsing (defaults are applied in the readers: a validator sees unset options without their default values).</summary>
internal sealed class ServeFlags
{
    static readonly ServingOptions Defaults = new();

    public Option<string?> Host { get; } = new("--host") { Description = "Address to bind (default 127.0.0.1, loopback; 0.0.0.0 exposes the server)." };
    public Option<int?> Port { get; } = new("--port") { Description = "Port (default 8000; 0 picks a free one)." };
    public Option<string?> ModelId { get; } = new("--model-id") { Description = "Model id clients name (default: the model folder's name)." };
    public Option<int?> MaxBatch { get; } = new("--max-batch") { Description = $"Sequences decoded together (default {Defaults.MaxBatchSize})." };
    public Option<int?> KvBudgetTokens { get; } = new("--kv-budget-tokens") { Description = "KV-cache tokens running requests may reserve together (prompt + max_tokens each); default batch x context." };
    public Option<int?> MaxQueue { get; } = new("--max-queue") { Description = $"Requests that may wait; more get 429 (default {Defaults.MaxQueue})." };
    public Option<int?> MaxPromptTokens { get; } = new("--max-prompt-tokens") { Description = "Longest prompt in tokens (default: the model's context)." };
    public Option<int?> MaxTokens { get; } = new("--max-tokens") { Description = $"Largest max_tokens a request may ask for (default {Defaults.MaxNewTokens})." };
    public Option<int?> MaxPrefillTokens { get; } = new("--max-prefill-tokens") { Description = $"Prompt tokens prefilled per step: more joiners wait a step, a longer prompt is prefilled in chunks (default {Defaults.MaxPrefillTokensPerStep})." };
    public Option<long?> MaxBodyBytes { get; } = new("--max-body-bytes") { Description = "Largest request body in bytes; 413 beyond (default 1 MiB)." };

    public void AddTo(Command command)
    {
        foreach (var o in new Option[] { Host, Port, ModelId, MaxBatch, KvBudgetTokens, MaxQueue, MaxPromptTokens, MaxTokens, MaxPrefillTokens, MaxBodyBytes }) command.Options.Add(o);
        command.Validators.Add(result =>
        {
            try
            {
                Serving(result.GetValue(MaxBatch), result.GetValue(KvBudgetTokens), result.GetValue(MaxQueue), result.GetValue(MaxPromptTokens), result.GetValue(MaxTokens), result.GetValue(MaxPrefillTokens)).Validate();
                Server(result.GetValue(Host), result.GetValue(Port), result.GetValue(MaxBodyBytes)).Validate();
            }
            catch (ArgumentException e)
            {
                result.AddError(CliErrors.Message(e));
            }
        });
    }

    public ServingOptions Serving(ParseResult r) =>
        Serving(r.GetValue(MaxBatch), r.GetValue(KvBudgetTokens), r.GetValue(MaxQueue), r.GetValue(MaxPromptTokens), r.GetValue(MaxTokens), r.GetValue(MaxPrefillTokens));

    static ServingOptions Serving(int? maxBatch, int? budget, int? queue, int? prompt, int? maxTokens, int? prefill) => new()
    {
        MaxBatchSize = maxBatch ?? Defaults.MaxBatchSize,
        KvBudgetTokens = budget ?? 0,
        MaxQueue = queue ?? Defaults.MaxQueue,
        MaxPromptTokens = prompt ?? 0,
        MaxNewTokens = maxTokens ?? Defaults.MaxNewTokens,
        MaxPrefillTokensPerStep = prefill ?? Defaults.MaxPrefillTokensPerStep,
    };

    static ServerOptions Server(string? host, int? port, long? maxBody)
    {
        var defaults = new ServerOptions();
        return defaults with { Host = host ?? defaults.Host, Port = port ?? defaults.Port, MaxBodyBytes = maxBody ?? defaults.MaxBodyBytes };
    }

    public ServerOptions Server(ParseResult r, CommonOptions common) => Server(r.GetValue(Host), r.GetValue(Port), r.GetValue(MaxBodyBytes)) with
    {
        ModelId = r.GetValue(ModelId) ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(common.ResolveModelFolder(r)))),
    };
}
