using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Tern.Generation;
using Tern.Runtime;
using Tern.Serving;
using Tern.Structured;

namespace Tern.Server;

/// <summary>Where and how the HTTP server listens.</summary>
public sealed record ServerOptions
{
    /// <summary>Address to bind: loopback unless told otherwise (an IP address, or "localhost").</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>Port; 0 picks a free one (see <see cref="TernServer.Address"/>).</summary>
    public int Port { get; init; } = 8000;

    /// <summary>When set, every <c>/v1</c> request needs <c>Authorization: Bearer</c> with this key.</summary>
    public string? ApiKey { get; init; }

    /// <summary>The model id clients name (<c>GET /v1/models</c>); requests naming another get a 404.</summary>
    public string ModelId { get; init; } = "tern";

    /// <summary>Largest request body in bytes (413 beyond).</summary>
    public long MaxBodyBytes { get; init; } = 1 << 20;

    /// <summary>max_tokens of a completion request that gives none (OpenAI's default, 16); chat requests default to the
    /// engine's <see cref="ServingOptions.MaxNewTokens"/>.</summary>
    public int DefaultMaxTokens { get; init; } = 16;

    /// <summary>Where the server logs what clients are not told: the details of its 500s (default: standard error).</summary>
    public TextWriter? Log { get; init; }

    /// <summary>Checks the values, with messages that name the option.</summary>
    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new ArgumentException($"--port must be in [0, 65535] (got {Port}).");
        if (Host != "localhost" && !IPAddress.TryParse(Host, out _)) throw new ArgumentException($"--host must be an IP address or localhost (got '{Host}').");
        if (MaxBodyBytes < 1024) throw new ArgumentException($"the body limit must be at least 1024 bytes (got {MaxBodyBytes}).");
        if (DefaultMaxTokens < 1) throw new ArgumentException($"the default max_tokens must be at least 1 (got {DefaultMaxTokens}).");
        if (ApiKey is { Length: 0 }) throw new ArgumentException("--api-key must not be empty.");
    }
}

/// <summary>
/// An OpenAI-compatible HTTP server (ASP.NET Core Kestrel) over a <see cref="ServingEngine"/>: <c>POST /v1/completions</c>,
/// <c>POST /v1/chat/completions</c> (both with <c>stream: true</c> as server-sent events), <c>GET /v1/models</c> and
/// <c>GET /health</c>. Errors are OpenAI error objects with 400/401/404/405/413/429/503 (429 and 503 with Retry-After), and
/// 500 with a request id whose details go to <see cref="ServerOptions.Log"/>; a client that disconnects cancels its request,
/// which frees its cache slot at the next step.
/// </summary>
public sealed class TernServer : IAsyncDisposable
{
    readonly WebApplication app;
    readonly ServingEngine engine;
    readonly ServerOptions options;
    readonly long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    TernServer(WebApplication app, ServingEngine engine, ServerOptions options, Uri address)
    {
        this.app = app;
        this.engine = engine;
        this.options = options;
        Address = address;
    }

    /// <summary>The address the server listens on (with the port picked when <see cref="ServerOptions.Port"/> is 0).</summary>
    public Uri Address { get; }

    /// <summary>Starts listening; the caller keeps the engine (and disposes it after the server).</summary>
    public static async Task<TernServer> StartAsync(ServingEngine engine, ServerOptions options, CancellationToken cancellation = default)
    {
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k =>
        {
            if (options.Host == "localhost") k.ListenLocalhost(options.Port);
            else k.Listen(IPAddress.Parse(options.Host), options.Port);
            k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
        });
        var app = builder.Build();
        TernServer? server = null;
        app.Use(async (context, next) =>
        {
            try
            {
                if (options.ApiKey is { } key && context.Request.Path.StartsWithSegments("/v1")
                    && !CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(context.Request.Headers.Authorization.ToString()), Encoding.UTF8.GetBytes("Bearer " + key)))
                    throw new ApiError(401, "Incorrect API key provided: pass it as 'Authorization: Bearer KEY'.", code: "invalid_api_key");
                await next(context);
            }
            catch (ApiError e) when (!context.Response.HasStarted)
            {
                await WriteError(context, e);
            }
            catch (Exception e) when (!context.Response.HasStarted && !(e is OperationCanceledException && context.RequestAborted.IsCancellationRequested))
            {
                await WriteError(context, Internal(e, options.Log));
            }
        });
        app.MapGet("/health", () => Json(new JsonObject { ["status"] = "ok" }));
        app.MapGet("/v1/models", () => server!.Models());
        app.MapPost("/v1/completions", (HttpContext context) => server!.Complete(context, chat: false));
        app.MapPost("/v1/chat/completions", (HttpContext context) => server!.Complete(context, chat: true));
        app.MapFallback((HttpContext context) =>
        {
            string path = context.Request.Path.Value ?? "";
            throw Endpoints.TryGetValue(path.TrimEnd('/'), out string? method)
                ? new ApiError(405, $"{path} takes {method}, not {context.Request.Method}.", code: "method_not_allowed") { Allow = method }
                : new ApiError(404, $"{context.Request.Method} {path} is not an endpoint of this server.", code: "unknown_url");
        });
        await app.StartAsync(cancellation);
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server = new TernServer(app, engine, options, new Uri(address.Replace("[::1]", "localhost")));
        return server;
    }

    /// <summary>The endpoints and the one method each takes: a wrong method gets 405 with Allow (RFC 9110 §15.5.6).</summary>
    static readonly Dictionary<string, string> Endpoints = new()
    {
        ["/health"] = "GET", ["/v1/models"] = "GET", ["/v1/completions"] = "POST", ["/v1/chat/completions"] = "POST",
    };

    /// <summary>Seconds a client told 429 or 503 waits before trying again (the Retry-After header).</summary>
    const int RetryAfterSeconds = 1;

    /// <summary>Stops listening.</summary>
    public async ValueTask DisposeAsync()
    {
        await app.StopAsync();
        await app.DisposeAsync();
    }

    /// <summary>JSON as OpenAI writes it: non-ASCII text and quotes unescaped.</summary>
    static readonly JsonSerializerOptions JsonOptions = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    static IResult Json(JsonObject body) => Results.Text(body.ToJsonString(JsonOptions), "application/json", Encoding.UTF8);

    IResult Models() => Json(new JsonObject
    {
        ["object"] = "list",
        ["data"] = new JsonArray(new JsonObject { ["id"] = options.ModelId, ["object"] = "model", ["created"] = created, ["owned_by"] = "tern" }),
    });

    async Task Complete(HttpContext context, bool chat)
    {
        // Completions default to OpenAI's 16 tokens; chat replies run to the server's limit (or the context), as OpenAI's do.
        var request = OpenAiRequest.Parse(await ReadBody(context), chat, chat ? engine.Options.MaxNewTokens : options.DefaultMaxTokens, options.ModelId);
        ServingRequest served;
        try
        {
            var prompt = request.Messages is { } messages ? EncodeChat(messages, request.Tools)
                : request.PromptTokens ?? engine.Encode(request.Prompt!);
            served = engine.Submit(prompt, request.Options with { Constraint = Constraint(request) }, request.SoftPrompt, context.RequestAborted);
        }
        catch (ServingException e)
        {
            throw Refusal(e, chat);
        }
        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        var response = new Response(id, chat ? "chat.completion" : "text_completion", DateTimeOffset.UtcNow.ToUnixTimeSeconds(), options.ModelId, chat)
        {
            Request = request, Served = served, Logprobs = new LogprobsJson(engine.Tokenizer),
            PromptText = request.Echo ? request.Prompt ?? engine.Tokenizer?.Decode(served.PromptTokens) ?? "" : "",
        };
        try
        {
            if (request.Stream) await Stream(context, served, response, request.IncludeUsage);
            else
            {
                var output = await served.Completion;
                await Json(response.Whole(output)).ExecuteAsync(context);
            }
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // The client left: the engine drops the request at its next step.
        }
        catch (Exception e) when (!context.Response.HasStarted && e is not ApiError)
        {
            throw Failure(e, chat);
        }
    }

    /// <summary>The error of a request the engine failed after admission: a policy impossible for this model (400), the server
    /// stopping before it finished (503, <c>service_unavailable</c>), else an internal error (500, logged). A stream already
    /// running gets the same error object as its last event.</summary>
    ApiError Failure(Exception e, bool chat) => e switch
    {
        ApiError api => api,
        OptionException option => ApiError.For(option),
        ArgumentException => new ApiError(400, e.Message),
        ServingException refused => Refusal(refused, chat),
        _ => Internal(e, options.Log),
    };

    /// <summary>A chat prompt; tools (or tool turns) with a template that does not render them, or a conversation the template
    /// cannot render with tools, are a 400 naming the field.</summary>
    IReadOnlyList<int> EncodeChat(IReadOnlyList<Tern.Tokenization.ChatMessage> messages, IReadOnlyList<JsonElement>? tools)
    {
        try
        {
            return engine.EncodeChat(messages, tools);
        }
        catch (NotSupportedException e)
        {
            throw new ApiError(400, $"{(tools is null ? "messages" : "tools")}: {e.Message}", tools is null ? "messages" : "tools");
        }
        catch (ArgumentException e) when (e.ParamName == "messages")
        {
            throw new ApiError(400, $"messages: {e.Message.Replace(" (Parameter 'messages')", "", StringComparison.Ordinal)}", "messages");
        }
    }

    /// <summary>The constraint of a request: a forced tool call (tool_choice "required" or a named function), else its JSON
    /// response format (null: text). A schema outside the supported subset is a 400 naming its keyword.</summary>
    JsonConstraint? Constraint(OpenAiRequest request)
    {
        if (request.Forced is null && request.Format is null) return null;
        var tokenizer = engine.Tokenizer ?? throw new ApiError(400, "response_format and tools need a tokenizer; this server has none.", "response_format");
        string field = request.Forced is not null ? "tools" : "response_format.json_schema.schema";
        try
        {
            return request.Forced is { } functions ? JsonConstraint.ForSchema(ToolCalls.Schema(functions, engine.ChatTemplate.ToolCallArguments), tokenizer)
                : request.Format!.Schema is { } schema ? JsonConstraint.ForSchema(schema, tokenizer) : JsonConstraint.Object(tokenizer);
        }
        catch (UnsupportedSchemaException e)
        {
            throw new ApiError(400, $"{field}: {e.Message}", field, "unsupported_schema_keyword");
        }
    }

    /// <summary>The HTTP error for a request the engine refused.</summary>
    static ApiError Refusal(ServingException e, bool chat) => e.Error switch
    {
        ServingError.Overloaded => new ApiError(429, e.Message, code: "rate_limit_exceeded", type: "rate_limit_error"),
        ServingError.Unavailable => new ApiError(503, e.Message, code: "service_unavailable", type: "server_error"),
        _ when e.InnerException is OptionException option => ApiError.For(option),
        _ => new ApiError(400, e.Message, chat && e.Field == "prompt" ? "messages" : e.Field),
    };

    /// <summary>The 500 of an unexpected failure: the client gets an OpenAI error object with a request id and no internal
    /// detail (a native message can carry stack frames and paths); the log gets the id and the whole exception.</summary>
    internal static ApiError Internal(Exception e, TextWriter? log)
    {
        string id = "req_" + Guid.NewGuid().ToString("N");
        (log ?? Console.Error).WriteLine($"{DateTimeOffset.UtcNow:O} 500 {id}: {e}");
        return new ApiError(500, $"The server had an error while processing your request (request id {id}); its log has the details.", type: "server_error");
    }

    async Task Stream(HttpContext context, ServingRequest served, Response response, bool includeUsage)
    {
        var http = context.Response;
        http.ContentType = "text/event-stream";
        http.Headers.CacheControl = "no-cache";
        var aborted = context.RequestAborted;
        if (response.Chat) await Event(http, response.Chunk(new JsonObject { ["role"] = "assistant", ["content"] = "" }, null), aborted);
        try
        {
            // Tokens that complete no text yet (part of a character), or text a tool-call reader holds back, pass their logprobs
            // on to the next chunk. A reply read for tool calls streams its text and each call's name, then its arguments.
            var pending = new List<GeneratedToken>();
            var calls = response.Request.ReadsToolCalls ? new ToolCallStream(response.Request.Functions) : null;
            async Task Deltas(IReadOnlyList<ToolCallDelta> deltas)
            {
                foreach (var delta in deltas)
                {
                    await Event(http, response.Chunk(Response.DeltaJson(delta), null, pending), aborted);
                    pending.Clear();
                }
            }
            bool echoed = !response.Request.Echo;
            await foreach (var token in served.Tokens.ReadAllAsync(aborted))
            {
                if (!echoed) await Event(http, response.EchoChunk(), aborted);
                echoed = true;
                if (response.Request.ScoreOnly) continue;
                pending.Add(token);
                if (token.Text.Length == 0) continue;
                if (calls is not null)
                {
                    await Deltas(calls.Push(token.Text));
                    continue;
                }
                await Event(http, response.Chunk(response.Chat ? new JsonObject { ["content"] = token.Text } : token.Text, null, pending), aborted);
                pending.Clear();
            }
            if (!echoed) await Event(http, response.EchoChunk(), aborted);
            var output = await served.Completion;
            if (calls is not null) await Deltas(calls.Finish());
            await Event(http, response.Chunk(response.Chat ? new JsonObject() : "", output.FinishReason, pending, calledTools: calls?.Calls > 0), aborted);
            if (includeUsage) await Event(http, response.UsageChunk(output), aborted);
        }
        catch (Exception e) when (e is not OperationCanceledException || !aborted.IsCancellationRequested)
        {
            // Ended by the server stopping (the drain deadline passed): service_unavailable, as a whole reply's 503; not a 500.
            await Event(http, ErrorBody(Failure(e, response.Chat)), aborted);
        }
        await http.WriteAsync("data: [DONE]\n\n", aborted);
        await http.Body.FlushAsync(aborted);
    }

    static async Task Event(HttpResponse http, JsonObject body, CancellationToken cancellation)
    {
        await http.WriteAsync("data: " + body.ToJsonString(JsonOptions) + "\n\n", cancellation);
        await http.Body.FlushAsync(cancellation);
    }

    async Task<JsonElement> ReadBody(HttpContext context)
    {
        if (context.Request.ContentLength > options.MaxBodyBytes) throw TooLarge();
        try
        {
            using var document = await JsonDocument.ParseAsync(context.Request.Body, cancellationToken: context.RequestAborted);
            return document.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new ApiError(400, $"the body is not valid JSON: {e.Message}");
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw TooLarge();
        }
    }

    ApiError TooLarge() => new(413, $"the request body exceeds the server's limit of {options.MaxBodyBytes} bytes.", code: "request_too_large");

    static JsonObject ErrorBody(ApiError e) => new()
    {
        ["error"] = new JsonObject { ["message"] = e.Message, ["type"] = e.Type, ["param"] = e.Param, ["code"] = e.Code },
    };

    static async Task WriteError(HttpContext context, ApiError e)
    {
        context.Response.StatusCode = e.Status;
        if (e.Status == 401) context.Response.Headers.WWWAuthenticate = "Bearer";
        if (e.Status is 429 or 503) context.Response.Headers.RetryAfter = RetryAfterSeconds.ToString(CultureInfo.InvariantCulture);
        if (e.Allow is { } allow) context.Response.Headers.Allow = allow;
        await Json(ErrorBody(e)).ExecuteAsync(context);
    }

    /// <summary>The OpenAI response objects of one request.</summary>
    sealed record Response(string Id, string Object, long Created, string Model, bool Chat)
    {
        public required OpenAiRequest Request { get; init; }
        public required ServingRequest Served { get; init; }
        public required LogprobsJson Logprobs { get; init; }
        /// <summary>The text an echo starts with (empty without echo).</summary>
        public required string PromptText { get; init; }
        int textOffset; // completions: characters of the choice's text streamed so far (logprobs' text_offset)

        JsonObject Envelope(string objectName, JsonArray choices) => new()
        {
            ["id"] = Id, ["object"] = objectName, ["created"] = Created, ["model"] = Model, ["choices"] = choices,
        };

        bool WantsLogprobs => Request.Options.Logprobs is not null;

        public JsonObject Whole(SequenceOutput output)
        {
            var choice = new JsonObject { ["index"] = 0 };
            var generated = Request.ScoreOnly ? Array.Empty<TokenLogprob>() : output.Logprobs ?? (IReadOnlyList<TokenLogprob>)Array.Empty<TokenLogprob>();
            string text = Request.ScoreOnly ? "" : output.Text ?? "";
            var (content, calls) = Reply(output);
            if (Chat)
            {
                var message = new JsonObject { ["role"] = "assistant", ["content"] = content };
                if (calls.Count > 0) message["tool_calls"] = ToolCallsJson(calls);
                choice["message"] = message;
            }
            else choice["text"] = PromptText + text;
            choice["logprobs"] = !WantsLogprobs ? null : Chat ? Logprobs.Chat(generated)
                : CompletionLogprobs(EchoedScores().Concat(generated.Select(t => (t.TokenId, (TokenLogprob?)t))).ToArray());
            choice["finish_reason"] = calls.Count > 0 ? "tool_calls" : FinishReasonName(Request.ScoreOnly ? FinishReason.Length : output.FinishReason);
            var body = Envelope(Object, new JsonArray(choice));
            body["usage"] = Usage(output);
            return body;
        }

        /// <summary>The reply's text and the tool calls read from it (none unless the request reads them).</summary>
        public (string? Content, IReadOnlyList<Tern.Tokenization.ChatToolCall> Calls) Reply(SequenceOutput output) => Request.ReadsToolCalls
            ? ToolCalls.Parse(output.Text ?? "", Request.Functions) : (output.Text, Array.Empty<Tern.Tokenization.ChatToolCall>());

        /// <summary>OpenAI's <c>tool_calls</c> of a whole reply.</summary>
        public static JsonArray ToolCallsJson(IReadOnlyList<Tern.Tokenization.ChatToolCall> calls) => new(calls.Select(c => (JsonNode)new JsonObject
        {
            ["id"] = CallId(), ["type"] = "function", ["function"] = new JsonObject { ["name"] = c.Name, ["arguments"] = c.Arguments },
        }).ToArray());

        static string CallId() => "call_" + Guid.NewGuid().ToString("N")[..24];

        /// <summary>A streamed chat delta of a reply read for tool calls: text, a call's start (index, id, type and name, as
        /// OpenAI sends it first), or a piece of its arguments.</summary>
        public static JsonObject DeltaJson(ToolCallDelta delta)
        {
            if (delta.Content is { } content) return new JsonObject { ["content"] = content };
            var call = new JsonObject { ["index"] = delta.Index };
            if (delta.Name is { } name)
            {
                call["id"] = CallId();
                call["type"] = "function";
                call["function"] = new JsonObject { ["name"] = name, ["arguments"] = "" };
            }
            else call["function"] = new JsonObject { ["arguments"] = delta.Arguments };
            return new JsonObject { ["tool_calls"] = new JsonArray(call) };
        }

        /// <summary>An echo's prompt tokens with their scores (none without echo).</summary>
        IEnumerable<(int, TokenLogprob?)> EchoedScores() => !Request.Echo ? Enumerable.Empty<(int, TokenLogprob?)>()
            : Served.PromptTokens.Select((id, i) => (id, Served.PromptLogprobs?[i]));

        JsonObject CompletionLogprobs(IReadOnlyList<(int, TokenLogprob?)> tokens) => Logprobs.Completion(tokens, ref textOffset);

        /// <summary>A streamed chunk: a chat delta (object) or completion text (string), with the finish reason on the last and
        /// the logprobs of <paramref name="tokens"/> when asked for.</summary>
        public JsonObject Chunk(JsonNode delta, FinishReason? finish, IReadOnlyList<GeneratedToken>? tokens = null, bool calledTools = false)
        {
            JsonNode? logprobs = !WantsLogprobs || tokens is null ? null
                : Chat ? Logprobs.Chat(tokens.Select(t => t.Logprob!))
                : CompletionLogprobs(tokens.Select(t => (t.TokenId, t.Logprob)).ToArray());
            var choice = new JsonObject { ["index"] = 0, [Chat ? "delta" : "text"] = delta, ["logprobs"] = logprobs, ["finish_reason"] = calledTools ? "tool_calls" : finish is { } f ? FinishReasonName(f) : null };
            return Envelope(Chat ? "chat.completion.chunk" : "text_completion", new JsonArray(choice));
        }

        /// <summary>A completion stream's first chunk with echo: the prompt (and its scores).</summary>
        public JsonObject EchoChunk()
        {
            var choice = new JsonObject { ["index"] = 0, ["text"] = PromptText, ["logprobs"] = WantsLogprobs ? CompletionLogprobs(EchoedScores().ToArray()) : null, ["finish_reason"] = null };
            return Envelope("text_completion", new JsonArray(choice));
        }

        public JsonObject UsageChunk(SequenceOutput output)
        {
            var body = Envelope(Chat ? "chat.completion.chunk" : "text_completion", new JsonArray());
            body["usage"] = Usage(output);
            return body;
        }

        static string FinishReasonName(FinishReason reason) => reason == FinishReason.Length ? "length" : "stop";

        /// <summary>OpenAI's usage: <c>prompt_tokens</c> counts the text's tokens, what a client sent and bills; a soft prompt's
        /// vectors, which take positions too, are told apart in <c>prompt_tokens_details.soft_prompt_tokens</c>.</summary>
        JsonObject Usage(SequenceOutput output)
        {
            int completion = Request.ScoreOnly ? 0 : output.Tokens.Count;
            var usage = new JsonObject
            {
                ["prompt_tokens"] = output.PromptTokens.Count,
                ["completion_tokens"] = completion,
                ["total_tokens"] = output.PromptTokens.Count + completion,
            };
            if (Served.SoftPromptTokens > 0) usage["prompt_tokens_details"] = new JsonObject { ["soft_prompt_tokens"] = Served.SoftPromptTokens };
            return usage;
        }
    }
}
