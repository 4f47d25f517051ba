using System.Runtime.CompilerServices;
using System.Text;
using Microsoft.Extensions.AI;
using Tern.Generation;
using Tern.Models;
using Tern.Structured;
using System.Text.Json;
using System.Text.Json.Nodes;
using ChatToolCall = Tern.Tokenization.ChatToolCall;
using Tern.Tokenization;
using AIChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace Tern.Serving;

/// <summary>
/// An in-process <see cref="IChatClient"/> (Microsoft.Extensions.AI) over a <see cref="ServingEngine"/>: a .NET application
/// uses a Tern model as it would any chat provider, streaming included, and concurrent calls share the engine's
/// continuous batch. Prompts are rendered with the tokenizer's chat template; <see cref="ChatOptions.ResponseFormat"/> JSON
/// (any object, or a schema) is honoured by constrained decoding; <see cref="ChatOptions.Tools"/> (function declarations) go
/// through a template that renders tools, and calls in the reply come back as <see cref="FunctionCallContent"/> (a required
/// <see cref="ChatOptions.ToolMode"/> forces one through the JSON constraint). A call runs after the engine's default soft
/// prompt, if it has one, or after the one named by <see cref="ChatOptions.AdditionalProperties"/>[<see cref="SoftPromptProperty"/>].
/// <para>As Microsoft.Extensions.AI's OpenAI adapter takes its provider's options from <see cref="ChatOptions.RawRepresentationFactory"/>
/// and returns the provider's reply as <c>RawRepresentation</c>, this client takes <see cref="GenerationOptions"/> from the
/// factory (e.g. <see cref="GenerationOptions.Logprobs"/>, a KV-cache policy) and returns the engine's output: a response's
/// <see cref="ChatResponse.RawRepresentation"/> is the <see cref="SequenceOutput"/> (with <see cref="SequenceOutput.Logprobs"/>),
/// a streamed text update's is the <see cref="GeneratedToken"/>s it holds (each with its <see cref="GeneratedToken.Logprob"/>),
/// and the last update's is the <see cref="SequenceOutput"/>.</para>
/// </summary>
public sealed class TernChatClient : IChatClient
{
    readonly bool ownsEngine;
    IDisposable? ownedModel;

    /// <summary>A client over a running engine (which the caller keeps and disposes).</summary>
    public TernChatClient(ServingEngine engine, string? modelId = null)
    {
        Engine = engine ?? throw new ArgumentNullException(nameof(engine));
        if (engine.Tokenizer is null) throw new ArgumentException("a chat client needs an engine started with a tokenizer.", nameof(engine));
        ModelId = modelId ?? "tern";
    }

    /// <summary>A client that starts (and disposes) its own engine for <paramref name="model"/>; the caller keeps the model.</summary>
    public TernChatClient(CausalLanguageModel model, TernTokenizer tokenizer, ServingOptions? options = null, string? modelId = null)
        : this(ServingEngine.Start(model, tokenizer, options), modelId) => ownsEngine = true;

    /// <summary>Loads a Hugging Face model folder (weights, config and tokenizer files) and starts an engine over it; the
    /// client owns both and disposes them: <c>using IChatClient chat = TernChatClient.Load("models/default");</c></summary>
    public static TernChatClient Load(string modelDirectory, ModelLoadOptions? load = null, ServingOptions? options = null, string? modelId = null)
    {
        var model = CausalLanguageModel.Load(modelDirectory, load);
        try
        {
            var tokenizer = TernTokenizer.Load(modelDirectory);
            return new TernChatClient(model, tokenizer, options, modelId ?? Path.GetFileName(Path.GetFullPath(modelDirectory).TrimEnd(Path.DirectorySeparatorChar)))
                { ownedModel = model };
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The <see cref="ChatOptions.AdditionalProperties"/> key whose string value names the engine's soft prompt a call
    /// runs after (<see cref="ServingOptions.SoftPrompts"/>; <see cref="ServingOptions.NoSoftPrompt"/>: none, not even the
    /// default one), as the server's body field does.</summary>
    public const string SoftPromptProperty = "soft_prompt";

    /// <summary>The engine requests go to.</summary>
    public ServingEngine Engine { get; }

    /// <summary>The model id reported in responses.</summary>
    public string ModelId { get; }

    /// <summary>Generation settings that <see cref="ChatOptions"/> do not cover (the KV-cache policy, repetition penalty, ...)
    /// and the defaults for those they do (max tokens, temperature, top-p, top-k, seed, stop sequences). A call whose
    /// <see cref="ChatOptions.RawRepresentationFactory"/> returns <see cref="GenerationOptions"/> uses those instead.</summary>
    public GenerationOptions Defaults { get; init; } = new() { MaxNewTokens = 256 };

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<AIChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var (request, functions) = Submit(messages, options, cancellationToken);
        var output = await request.Completion.WaitAsync(cancellationToken).ConfigureAwait(false);
        var (contents, called) = Reply(output, functions);
        return new ChatResponse(new AIChatMessage(ChatRole.Assistant, contents) { RawRepresentation = output })
        {
            RawRepresentation = output,
            ModelId = ModelId,
            ResponseId = NewId(),
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = called ? ChatFinishReason.ToolCalls : Finish(output.FinishReason),
            Usage = Usage(request, output),
        };
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AIChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        // A caller that stops reading early cancels the request, so its cache slot is freed at the next step.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        try
        {
            var (request, functions) = Submit(messages, options, stop.Token);
            string id = NewId();
            var created = DateTimeOffset.UtcNow;
            // A reply read for tool calls streams its text; its calls come whole in the last update, as M.E.AI's OpenAI adapter
            // gathers streamed calls. Tokens that complete no text yet (part of a character, or text the tool-call reader
            // holds back) go with the next update that has text.
            var reader = functions is null ? null : new ToolCallStream(functions);
            var calls = new List<(string Name, StringBuilder Arguments)>();
            var pending = new List<GeneratedToken>();
            await foreach (var token in request.Tokens.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                pending.Add(token);
                if (token.Text.Length == 0) continue;
                string text = reader is null ? string.Concat(pending.Select(t => t.Text)) : Gather(reader.Push(token.Text), calls);
                if (text.Length == 0) continue;
                yield return new ChatResponseUpdate(ChatRole.Assistant, text)
                    { ModelId = ModelId, ResponseId = id, MessageId = id, CreatedAt = created, RawRepresentation = pending.ToArray() };
                pending.Clear();
            }
            var output = await request.Completion.ConfigureAwait(false);
            var contents = new List<AIContent>();
            if (reader is not null && Gather(reader.Finish(), calls) is { Length: > 0 } rest) contents.Add(new TextContent(rest));
            foreach (var (name, arguments) in calls)
                contents.Add(FunctionCallContent.CreateFromParsedArguments(arguments.ToString(), CallId(), name,
                    json => JsonSerializer.Deserialize<Dictionary<string, object?>>(json)!)); // a call cut short carries its parse error
            contents.Add(new UsageContent(Usage(request, output)));
            yield return new ChatResponseUpdate(ChatRole.Assistant, contents)
            {
                ModelId = ModelId, ResponseId = id, MessageId = id, CreatedAt = created, RawRepresentation = output,
                FinishReason = calls.Count > 0 ? ChatFinishReason.ToolCalls : Finish(output.FinishReason),
            };
        }
        finally
        {
            stop.Cancel();
        }
    }

    /// <summary>Submits a call; returns the functions its reply is read for calls to (null: none, or tool mode none).</summary>
    (ServingRequest, IReadOnlyList<ToolFunction>?) Submit(IEnumerable<AIChatMessage> messages, ChatOptions? options, CancellationToken cancellation)
    {
        var declarations = options?.Tools?.OfType<AIFunctionDeclaration>().ToArray() ?? Array.Empty<AIFunctionDeclaration>();
        var tools = declarations.Select(f => JsonSerializer.SerializeToElement(new JsonObject
        {
            ["type"] = "function",
            ["function"] = new JsonObject { ["name"] = f.Name, ["description"] = f.Description, ["parameters"] = JsonNode.Parse(f.JsonSchema.GetRawText()) },
        })).ToArray();
        var functions = declarations.Select(f => new ToolFunction(f.Name, f.JsonSchema)).ToArray();
        var prompt = Engine.EncodeChat(messages.Select(TernMessage), tools.Length > 0 ? tools : null);
        var generation = Options(options);
        // A required tool mode forces a call (to the named function, or to any) through the JSON constraint.
        if (functions.Length > 0 && options!.ToolMode is RequiredChatToolMode required)
            generation = generation with
            {
                Constraint = JsonConstraint.ForSchema(ToolCalls.Schema(required.RequiredFunctionName is { } name ? functions.Where(f => f.Name == name) : functions,
                    Engine.ChatTemplate.ToolCallArguments), Engine.Tokenizer!),
            };
        bool reads = functions.Length > 0 && options!.ToolMode is not NoneChatToolMode;
        string? softPrompt = options?.AdditionalProperties?.TryGetValue(SoftPromptProperty, out string? named) == true ? named : null;
        return (Engine.Submit(prompt, generation, softPrompt, cancellation), reads ? functions : null);
    }

    /// <summary>A message as the chat template takes it: function calls of an assistant turn, a tool turn's results as text.</summary>
    static Tokenization.ChatMessage TernMessage(AIChatMessage m)
    {
        var calls = m.Contents.OfType<FunctionCallContent>().Select(c => new ChatToolCall(c.Name, JsonSerializer.Serialize(c.Arguments ?? new Dictionary<string, object?>()))).ToArray();
        if (m.Role == ChatRole.Tool)
            return new Tokenization.ChatMessage("tool", string.Concat(m.Contents.OfType<FunctionResultContent>().Select(r => r.Result as string ?? JsonSerializer.Serialize(r.Result))));
        return new Tokenization.ChatMessage(m.Role.Value, m.Text) { ToolCalls = calls.Length > 0 ? calls : null };
    }

    /// <summary>The text of <paramref name="deltas"/>; the calls' names and argument pieces go to <paramref name="calls"/>.</summary>
    static string Gather(IReadOnlyList<ToolCallDelta> deltas, List<(string Name, StringBuilder Arguments)> calls)
    {
        var text = new StringBuilder();
        foreach (var delta in deltas)
        {
            if (delta.Content is { } content) text.Append(content);
            else if (delta.Name is { } name) calls.Add((name, new StringBuilder()));
            else calls[delta.Index].Arguments.Append(delta.Arguments);
        }
        return text.ToString();
    }

    static string CallId() => "call_" + Guid.NewGuid().ToString("N")[..24];

    /// <summary>The reply's contents: its text, and the calls read from it when <paramref name="functions"/> are given (true
    /// when there are some).</summary>
    static (List<AIContent>, bool) Reply(SequenceOutput output, IReadOnlyList<ToolFunction>? functions)
    {
        var (text, calls) = functions is null ? (output.Text, Array.Empty<ChatToolCall>()) : ToolCalls.Parse(output.Text ?? "", functions);
        var contents = new List<AIContent>();
        if (text is not null) contents.Add(new TextContent(text));
        foreach (var call in calls)
            contents.Add(new FunctionCallContent(CallId(), call.Name, JsonSerializer.Deserialize<Dictionary<string, object?>>(call.Arguments)));
        return (contents, calls.Count > 0);
    }

    /// <summary>The generation options of a call: those <see cref="ChatOptions.RawRepresentationFactory"/> returns (when it
    /// returns <see cref="GenerationOptions"/>), else <see cref="Defaults"/>, with what <paramref name="options"/> sets.</summary>
    GenerationOptions Options(ChatOptions? options)
    {
        if (options is null) return Defaults;
        var raw = options.RawRepresentationFactory?.Invoke(this) as GenerationOptions ?? Defaults;
        return raw with
        {
            MaxNewTokens = options.MaxOutputTokens ?? raw.MaxNewTokens,
            Temperature = options.Temperature ?? raw.Temperature,
            TopP = options.TopP ?? raw.TopP,
            TopK = options.TopK ?? raw.TopK,
            Seed = options.Seed ?? raw.Seed,
            StopStrings = options.StopSequences is { Count: > 0 } stops ? stops.ToArray() : raw.StopStrings,
            Constraint = Constraint(options.ResponseFormat) ?? raw.Constraint,
        };
    }

    /// <summary><see cref="ChatResponseFormat.Json"/> and <see cref="ChatResponseFormat.ForJsonSchema(System.Text.Json.JsonElement, string?, string?)"/>
    /// through constrained decoding (<see cref="JsonConstraint"/>); text (or none): null. A schema outside the supported
    /// subset throws <see cref="UnsupportedSchemaException"/> naming the keyword.</summary>
    JsonConstraint? Constraint(ChatResponseFormat? format) => format switch
    {
        ChatResponseFormatJson { Schema: { } schema } => JsonConstraint.ForSchema(schema, Engine.Tokenizer!),
        ChatResponseFormatJson => JsonConstraint.Object(Engine.Tokenizer!),
        _ => null,
    };

    static string NewId() => "chatcmpl-" + Guid.NewGuid().ToString("N");

    static ChatFinishReason Finish(FinishReason reason) => reason == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;

    /// <summary>The input counts the text's tokens, as the server's <c>prompt_tokens</c> does; a soft prompt's vectors are the
    /// additional count <c>soft_prompt_tokens</c>.</summary>
    static UsageDetails Usage(ServingRequest request, SequenceOutput output) => new()
    {
        InputTokenCount = output.PromptTokens.Count,
        OutputTokenCount = output.Tokens.Count,
        TotalTokenCount = output.PromptTokens.Count + output.Tokens.Count,
        AdditionalCounts = request.SoftPromptTokens == 0 ? null : new() { ["soft_prompt_tokens"] = request.SoftPromptTokens },
    };

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(ChatClientMetadata) ? new ChatClientMetadata("tern", null, ModelId)
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType.IsInstanceOfType(Engine) ? Engine
        : null;

    /// <inheritdoc />
    public void Dispose()
    {
        if (ownsEngine) Engine.Dispose();
        ownedModel?.Dispose();
    }
}
