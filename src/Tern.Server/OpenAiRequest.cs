using System.Text.Json;
using Tern.Generation;
using Tern.Caching;
using Tern.Runtime;
using Tern.Structured;
using Tern.Tokenization;

namespace Tern.Server;

/// <summary>A request body the server refuses: OpenAI's error object fields and the HTTP status.</summary>
internal sealed class ApiError(int status, string message, string? param = null, string? code = null, string type = "invalid_request_error")
    : Exception(message)
{
    public int Status { get; } = status;
    public string? Param { get; } = param;
    public string? Code { get; } = code;
    public string Type { get; } = type;
    /// <summary>With 405: the method the endpoint takes.</summary>
    public string? Allow { get; init; }

    /// <summary>An invalid option in the request's words, blaming the field of the option the message names first.</summary>
    public static ApiError For(OptionException e) => new(400, e.Render(OpenAiRequest.Field), OpenAiRequest.Field(e.Option));
}

/// <summary>
/// A parsed <c>/v1/completions</c> or <c>/v1/chat/completions</c> body: the fields Tern serves, each type-checked with an
/// error naming it, plus the Tern extensions (<c>kv_policy</c>, <c>kv_budget</c>, <c>kv_sink</c>, <c>kv_recent</c>,
/// <c>kv_bits</c>, <c>kv_evict_every</c>, <c>soft_prompt</c> — the name of a soft prompt the server holds, or <c>"none"</c> —, and as in vLLM <c>top_k</c>, <c>repetition_penalty</c>, <c>ignore_eos</c>). Unknown
/// fields are ignored, as OpenAI clients send some that do not apply.
/// </summary>
internal sealed record OpenAiRequest
{
    public string? Prompt { get; init; }
    public IReadOnlyList<int>? PromptTokens { get; init; }
    public IReadOnlyList<ChatMessage>? Messages { get; init; }
    public required bool Stream { get; init; }
    public required bool IncludeUsage { get; init; }
    public required GenerationOptions Options { get; init; }
    /// <summary>Completions: the reply starts with the prompt (with its scores when logprobs are asked for).</summary>
    public bool Echo { get; init; }
    /// <summary>max_tokens 0 with echo: the reply is the prompt alone.</summary>
    public bool ScoreOnly { get; init; }
    /// <summary><c>soft_prompt</c>: the name of the server's soft prompt to run before the prompt; <c>"none"</c>
    /// (<see cref="Tern.Serving.ServingOptions.NoSoftPrompt"/>) runs none, not even the default one; absent or null: the default one, if any.</summary>
    public string? SoftPrompt { get; init; }
    /// <summary><c>response_format</c>: null for text, else the JSON schema (json_schema) or null schema (json_object).</summary>
    public JsonFormat? Format { get; init; }

    /// <summary>A JSON response format: any object (<see cref="Schema"/> null) or a document of the schema.</summary>
    public sealed record JsonFormat(JsonElement? Schema);

    /// <summary>Chat <c>tools</c> as sent (function tools), or null.</summary>
    public IReadOnlyList<JsonElement>? Tools { get; init; }
    /// <summary>The functions of <see cref="Tools"/>.</summary>
    public IReadOnlyList<ToolFunction> Functions { get; init; } = Array.Empty<ToolFunction>();
    /// <summary><c>tool_choice</c>: "auto" (the reply may call), "none" (it does not), "required" (it calls one), or the
    /// name of the function it must call.</summary>
    public string ToolChoice { get; init; } = "auto";

    /// <summary>True when the reply is read for tool calls.</summary>
    public bool ReadsToolCalls => Tools is not null && ToolChoice != "none";

    /// <summary>The functions the reply is forced to call one of (tool_choice "required" or a name), or null.</summary>
    public IReadOnlyList<ToolFunction>? Forced => Tools is null || ToolChoice is "auto" or "none" ? null
        : ToolChoice == "required" ? Functions : Functions.Where(f => f.Name == ToolChoice).ToArray();

    /// <summary>The request field that sets each option the library's errors may name for a request.</summary>
    static readonly Dictionary<TernOption, string> Fields = new()
    {
        [TernOption.KvPolicy] = "kv_policy",
        [TernOption.KvBudget] = "kv_budget",
        [TernOption.KvSink] = "kv_sink",
        [TernOption.KvRecent] = "kv_recent",
        [TernOption.KvBits] = "kv_bits",
        [TernOption.KvEvictEvery] = "kv_evict_every",
        [TernOption.SoftPromptFile] = "soft_prompt",
        [TernOption.MaxNewTokens] = "max_tokens",
        [TernOption.Temperature] = "temperature",
        [TernOption.TopK] = "top_k",
        [TernOption.TopP] = "top_p",
        [TernOption.RepetitionPenalty] = "repetition_penalty",
        [TernOption.Logprobs] = "logprobs",
        [TernOption.PromptLogprobs] = "logprobs",
    };

    /// <summary>An option as a request spells it: its field (an option no request sets keeps its neutral name).</summary>
    public static string Field(TernOption option) => Fields.GetValueOrDefault(option, option.Name);

    /// <summary>Reads a body; <paramref name="chat"/> selects the chat shape (messages) over the completion shape (prompt).</summary>
    /// <param name="defaultMaxTokens">max_tokens when the body has none.</param>
    public static OpenAiRequest Parse(JsonElement body, bool chat, int defaultMaxTokens, string? servedModel)
    {
        CheckText(body, "");
        return ParseFields(body, chat, defaultMaxTokens, servedModel);
    }

    /// <summary>Refuses text that is not Unicode anywhere in the body — invalid UTF-8 bytes, or a lone surrogate escaped as
    /// \ud800 — with a 400 naming the field, before any field is read (the reader throws on reading such a string).</summary>
    static void CheckText(JsonElement e, string path)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String:
                try { e.GetString(); }
                catch (InvalidOperationException) // the kind is a string: only the text itself can be wrong
                {
                    throw new ApiError(400, $"{(path.Length == 0 ? "the body" : path)} is not valid UTF-8 text (invalid bytes, or a lone surrogate such as \\ud800): send Unicode text.",
                        path.Length == 0 ? null : path);
                }
                break;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in e.EnumerateArray()) CheckText(item, $"{path}[{i++}]");
                break;
            case JsonValueKind.Object:
                foreach (var property in e.EnumerateObject())
                {
                    string name;
                    try { name = property.Name; }
                    catch (InvalidOperationException)
                    {
                        throw new ApiError(400, $"a field name in {(path.Length == 0 ? "the body" : path)} is not valid UTF-8 text: send Unicode text.", path.Length == 0 ? null : path);
                    }
                    CheckText(property.Value, path.Length == 0 ? name : $"{path}.{name}");
                }
                break;
        }
    }

    static OpenAiRequest ParseFields(JsonElement body, bool chat, int defaultMaxTokens, string? servedModel)
    {
        if (body.ValueKind != JsonValueKind.Object) throw new ApiError(400, "the request body must be a JSON object.");
        string model = String(body, "model") ?? throw new ApiError(400, "you must provide a model parameter.", "model");
        if (servedModel is not null && model != servedModel)
            throw new ApiError(404, $"The model '{model}' does not exist; this server serves '{servedModel}'.", "model", "model_not_found");
        if (Int(body, "n") is { } n && n != 1) throw new ApiError(400, $"n must be 1 (got {n}): Tern returns one choice per request.", "n");
        var (logprobs, echo) = chat ? (ChatLogprobs(body), false) : (CompletionLogprobs(body), Bool(body, "echo") ?? false);

        string? prompt = null;
        IReadOnlyList<int>? promptTokens = null;
        IReadOnlyList<ChatMessage>? messages = null;
        if (chat) messages = ReadMessages(body);
        else (prompt, promptTokens) = ReadPrompt(body);

        int maxTokens = Int(body, "max_completion_tokens") ?? Int(body, "max_tokens") ?? defaultMaxTokens;
        string maxField = Has(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
        // max_tokens 0 with echo only scores the prompt (evaluation clients): one token is generated and dropped.
        bool scoreOnly = echo && maxTokens == 0;
        if (maxTokens < 1 && !scoreOnly) throw new ApiError(400, $"{maxField} must be at least 1 (got {maxTokens}){(chat ? "" : "; 0 is allowed with echo")}.", maxField);
        double temperature = Number(body, "temperature") ?? 1.0;
        if (temperature is < 0 or > 2) throw new ApiError(400, $"temperature must be between 0 and 2 (got {temperature}).", "temperature");
        double topP = Number(body, "top_p") ?? 1.0;
        if (topP is <= 0 or > 1) throw new ApiError(400, $"top_p must be in (0, 1] (got {topP}).", "top_p");
        int topK = Int(body, "top_k") ?? 0;
        if (topK < 0) throw new ApiError(400, $"top_k must be >= 0 (got {topK}).", "top_k");
        double repetition = Number(body, "repetition_penalty") ?? 1.0;
        if (repetition <= 0) throw new ApiError(400, $"repetition_penalty must be > 0 (got {repetition}).", "repetition_penalty");
        var stop = Stop(body);

        var format = ResponseFormat(body);
        var (tools, functions, toolChoice) = chat ? ReadTools(body) : (null, Array.Empty<ToolFunction>(), "auto");
        bool ignoreEos = Bool(body, "ignore_eos") ?? false;
        if (format is not null && ignoreEos)
            throw new ApiError(400, "response_format needs the end-of-sequence token to end the document: drop ignore_eos.", "ignore_eos");
        bool stream = Bool(body, "stream") ?? false;
        bool includeUsage = false;
        if (Field(body, "stream_options", JsonValueKind.Object) is { } streamOptions)
            includeUsage = Bool(streamOptions, "include_usage", "stream_options.include_usage") ?? false;

        return new OpenAiRequest
        {
            Prompt = prompt, PromptTokens = promptTokens, Messages = messages, Stream = stream, IncludeUsage = includeUsage,
            Echo = echo, ScoreOnly = scoreOnly, Format = format, SoftPrompt = String(body, "soft_prompt"), Tools = tools, Functions = functions, ToolChoice = toolChoice,
            Options = KvPolicy(body, new GenerationOptions
            {
                MaxNewTokens = Math.Max(maxTokens, 1),
                Logprobs = logprobs,
                PromptLogprobs = echo ? logprobs : null,
                Temperature = temperature,
                TopP = topP,
                TopK = topK,
                RepetitionPenalty = repetition,
                Seed = Long(body, "seed"),
                IgnoreEos = ignoreEos,
                StopStrings = stop,
            }),
        };
    }

    /// <summary>Chat <c>tools</c> (function tools: name, optional description and parameters schema) and <c>tool_choice</c>.</summary>
    static (IReadOnlyList<JsonElement>?, IReadOnlyList<ToolFunction>, string) ReadTools(JsonElement body)
    {
        var functions = new List<ToolFunction>();
        var tools = new List<JsonElement>();
        if (Field(body, "tools", JsonValueKind.Array) is { } array)
        {
            int i = 0;
            foreach (var tool in array.EnumerateArray())
            {
                string at = $"tools[{i++}]";
                if (tool.ValueKind != JsonValueKind.Object || String(tool, "type", $"{at}.type") != "function")
                    throw new ApiError(400, $"{at} must be an object with type \"function\".", $"{at}.type");
                var function = Field(tool, "function", JsonValueKind.Object, $"{at}.function") ?? throw new ApiError(400, $"{at}.function is missing.", $"{at}.function");
                string name = String(function, "name", $"{at}.function.name") ?? throw new ApiError(400, $"{at}.function.name is missing.", $"{at}.function.name");
                if (functions.Any(f => f.Name == name)) throw new ApiError(400, $"{at}.function.name '{name}' is given twice.", $"{at}.function.name");
                functions.Add(new ToolFunction(name, Field(function, "parameters", JsonValueKind.Object, $"{at}.function.parameters")?.Clone()));
                tools.Add(tool.Clone());
            }
        }
        string choice = "auto";
        if (body.TryGetProperty("tool_choice", out var c) && c.ValueKind != JsonValueKind.Null)
        {
            choice = c.ValueKind switch
            {
                JsonValueKind.String when c.GetString() is "auto" or "none" or "required" => c.GetString()!,
                JsonValueKind.Object when Field(c, "function", JsonValueKind.Object, "tool_choice.function") is { } f
                    && String(f, "name", "tool_choice.function.name") is { } name => functions.Any(x => x.Name == name) ? name
                        : throw new ApiError(400, $"tool_choice names the function '{name}', which is not in tools.", "tool_choice"),
                _ => throw new ApiError(400, "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}.", "tool_choice"),
            };
            if (functions.Count == 0 && choice != "none") throw new ApiError(400, "tool_choice needs tools.", "tool_choice");
        }
        return (functions.Count > 0 ? tools : null, functions, choice);
    }

    /// <summary><c>response_format</c>: text (null), json_object, or json_schema with its <c>schema</c> (OpenAI's shape).</summary>
    static JsonFormat? ResponseFormat(JsonElement body)
    {
        if (Field(body, "response_format", JsonValueKind.Object) is not { } format) return null;
        string type = String(format, "type", "response_format.type") ?? throw new ApiError(400, "response_format.type is missing.", "response_format.type");
        switch (type)
        {
            case "text": return null;
            case "json_object": return new JsonFormat(null);
            case "json_schema":
                var spec = Field(format, "json_schema", JsonValueKind.Object, "response_format.json_schema")
                    ?? throw new ApiError(400, "response_format.json_schema is missing: give {\"name\", \"schema\"}.", "response_format.json_schema");
                String(spec, "name", "response_format.json_schema.name");
                Bool(spec, "strict", "response_format.json_schema.strict");
                var schema = Field(spec, "schema", JsonValueKind.Object, "response_format.json_schema.schema")
                    ?? throw new ApiError(400, "response_format.json_schema.schema is missing.", "response_format.json_schema.schema");
                return new JsonFormat(schema);
            default:
                throw new ApiError(400, $"response_format.type must be text, json_object or json_schema (got '{type}').", "response_format.type");
        }
    }

    /// <summary>Chat: <c>logprobs</c> (bool) and <c>top_logprobs</c> (0–20, with logprobs true) as the top count, or null.</summary>
    static int? ChatLogprobs(JsonElement body)
    {
        bool wanted = Bool(body, "logprobs") ?? false;
        int? top = Int(body, "top_logprobs");
        if (top is < 0 or > TokenLogprob.MaxTop)
            throw new ApiError(400, $"top_logprobs must be between 0 and {TokenLogprob.MaxTop} (got {top}).", "top_logprobs");
        if (top is not null && !wanted) throw new ApiError(400, "top_logprobs needs logprobs set to true.", "top_logprobs");
        return wanted ? top ?? 0 : null;
    }

    /// <summary>Completions: <c>logprobs</c> (0–20: the top count; each token's own logprob always comes), or null.</summary>
    static int? CompletionLogprobs(JsonElement body)
    {
        if (!body.TryGetProperty("logprobs", out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int top))
            throw new ApiError(400, $"logprobs must be an integer between 0 and {TokenLogprob.MaxTop} on completions (got {v.GetRawText()}).", "logprobs");
        if (top is < 0 or > TokenLogprob.MaxTop) throw new ApiError(400, $"logprobs must be between 0 and {TokenLogprob.MaxTop} (got {top}).", "logprobs");
        return top;
    }

    static (string?, IReadOnlyList<int>?) ReadPrompt(JsonElement body)
    {
        if (!body.TryGetProperty("prompt", out var p) || p.ValueKind == JsonValueKind.Null)
            throw new ApiError(400, "you must provide a prompt.", "prompt");
        if (p.ValueKind == JsonValueKind.String) return (NonEmpty(p.GetString()!, "prompt"), null);
        if (p.ValueKind == JsonValueKind.Array)
        {
            var items = p.EnumerateArray().ToArray();
            if (items.Length == 1 && items[0].ValueKind == JsonValueKind.String) return (NonEmpty(items[0].GetString()!, "prompt"), null);
            if (items.Length > 0 && items.All(i => i.ValueKind == JsonValueKind.Number && i.TryGetInt32(out _)))
                return (null, items.Select(i => i.GetInt32()).ToArray());
            if (items.Length > 1 && items.All(i => i.ValueKind == JsonValueKind.String))
                throw new ApiError(400, "prompt holds several prompts; send one request per prompt.", "prompt");
        }
        throw new ApiError(400, "prompt must be a string, an array of one string, or an array of token ids.", "prompt");
    }

    static string NonEmpty(string text, string field) =>
        text.Length > 0 ? text : throw new ApiError(400, $"{field} is empty; it needs at least one character.", field);

    static IReadOnlyList<ChatMessage> ReadMessages(JsonElement body)
    {
        var array = Field(body, "messages", JsonValueKind.Array) ?? throw new ApiError(400, "you must provide messages.", "messages");
        var messages = new List<ChatMessage>();
        int i = 0;
        foreach (var m in array.EnumerateArray())
        {
            string at = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw new ApiError(400, $"{at} must be an object with role and content.", at);
            string role = String(m, "role", $"{at}.role") ?? throw new ApiError(400, $"{at}.role is missing.", $"{at}.role");
            if (role is not ("system" or "developer" or "user" or "assistant" or "tool"))
                throw new ApiError(400, $"{at}.role must be system, developer, user, assistant or tool (got '{role}').", $"{at}.role");
            messages.Add(new ChatMessage(role == "developer" ? "system" : role, Content(m, $"{at}.content")) { ToolCalls = role == "assistant" ? CallsOf(m, at) : null });
        }
        if (messages.Count == 0) throw new ApiError(400, "messages is empty; it needs at least one message.", "messages");
        return messages;
    }

    /// <summary>An assistant message's <c>tool_calls</c> (function calls with arguments as a JSON object's text), or null.</summary>
    static IReadOnlyList<ChatToolCall>? CallsOf(JsonElement message, string at)
    {
        if (Field(message, "tool_calls", JsonValueKind.Array, $"{at}.tool_calls") is not { } calls) return null;
        return calls.EnumerateArray().Select((call, j) =>
        {
            string path = $"{at}.tool_calls[{j}].function";
            var function = call.ValueKind == JsonValueKind.Object ? Field(call, "function", JsonValueKind.Object, path) : null;
            string name = (function is { } f ? String(f, "name", $"{path}.name") : null) ?? throw new ApiError(400, $"{path}.name is missing.", $"{path}.name");
            string arguments = String(function!.Value, "arguments", $"{path}.arguments") ?? "{}";
            try
            {
                using var parsed = JsonDocument.Parse(arguments);
                if (parsed.RootElement.ValueKind != JsonValueKind.Object) throw new JsonException();
            }
            catch (JsonException)
            {
                throw new ApiError(400, $"{path}.arguments must be a JSON object's text.", $"{path}.arguments");
            }
            return new ChatToolCall(name, arguments);
        }).ToArray();
    }

    /// <summary>A message's content: a string, or an array of text parts.</summary>
    static string Content(JsonElement message, string at)
    {
        if (!message.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null) return "";
        if (c.ValueKind == JsonValueKind.String) return c.GetString()!;
        if (c.ValueKind == JsonValueKind.Array)
            return string.Concat(c.EnumerateArray().Select((part, k) =>
                part.ValueKind == JsonValueKind.Object && String(part, "type", $"{at}[{k}].type") == "text"
                    ? String(part, "text", $"{at}[{k}].text") ?? ""
                    : throw new ApiError(400, $"{at}[{k}] must be a text part: Tern models read text only.", $"{at}[{k}]")));
        throw new ApiError(400, $"{at} must be a string or an array of text parts.", at);
    }

    static IReadOnlyList<string> Stop(JsonElement body)
    {
        if (!body.TryGetProperty("stop", out var s) || s.ValueKind == JsonValueKind.Null) return Array.Empty<string>();
        string[] stops = s.ValueKind switch
        {
            JsonValueKind.String => new[] { s.GetString()! },
            JsonValueKind.Array when s.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String) => s.EnumerateArray().Select(x => x.GetString()!).ToArray(),
            _ => throw new ApiError(400, "stop must be a string or an array of strings.", "stop"),
        };
        if (stops.Length > 4) throw new ApiError(400, $"stop holds {stops.Length} sequences; at most 4 are allowed.", "stop");
        if (stops.Any(x => x.Length == 0)) throw new ApiError(400, "stop sequences must not be empty.", "stop");
        return stops;
    }

    /// <summary>The Tern extensions: <paramref name="options"/> with a KV-cache policy per request, validated by the library
    /// (options named as fields).</summary>
    static GenerationOptions KvPolicy(JsonElement body, GenerationOptions options)
    {
        string? policy = String(body, "kv_policy");
        string? budget = BudgetText(body, "kv_budget");
        int? sinks = Int(body, "kv_sink");
        string? recent = BudgetText(body, "kv_recent");
        int? bits = Int(body, "kv_bits");
        int? evictEvery = Int(body, "kv_evict_every");
        if (policy is null && budget is null && sinks is null && recent is null && bits is null && evictEvery is null) return options;
        try
        {
            return options.WithKvPolicy(KvPolicyOptions.Parse(policy, budget, sinks, recent, bits, evictEvery));
        }
        catch (OptionException e)
        {
            throw ApiError.For(e);
        }
    }

    static string? BudgetText(JsonElement body, string name) =>
        body.TryGetProperty(name, out var v) ? v.ValueKind switch
        {
            JsonValueKind.Null => null,
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Number => v.GetRawText(),
            _ => throw new ApiError(400, $"{name} must be a token count or a ratio, as a number or a string.", name),
        } : null;

    // ------------------------------------------------------------------ typed field readers (null when absent or null)

    static bool Has(JsonElement o, string name) => o.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null;

    static JsonElement? Field(JsonElement o, string name, JsonValueKind kind, string? path = null)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != kind) throw new ApiError(400, $"{path ?? name} must be {Describe(kind)} (got {Describe(v.ValueKind)}).", path ?? name);
        return v;
    }

    static string? String(JsonElement o, string name, string? path = null) => Field(o, name, JsonValueKind.String, path)?.GetString();

    static double? Number(JsonElement o, string name) => Field(o, name, JsonValueKind.Number)?.GetDouble();

    static int? Int(JsonElement o, string name) => Long(o, name) is { } v
        ? v is >= int.MinValue and <= int.MaxValue ? (int)v : throw new ApiError(400, $"{name} is out of range (got {v}).", name)
        : null;

    static long? Long(JsonElement o, string name) => Field(o, name, JsonValueKind.Number) is { } v
        ? v.TryGetInt64(out long x) ? x : throw new ApiError(400, $"{name} must be an integer (got {v.GetRawText()}).", name)
        : null;

    static bool? Bool(JsonElement o, string name, string? path = null)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new ApiError(400, $"{path ?? name} must be a boolean (got {Describe(v.ValueKind)}).", path ?? name),
        };
    }

    static string Describe(JsonValueKind kind) => kind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };
}
