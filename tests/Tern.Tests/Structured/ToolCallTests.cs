using System.Text;
using System.Text.Json;
using Json.Schema;
using OpenAI.Chat;
using Tern.Server;
using Tern.Serving;
using Tern.Structured;
using Tern.Tests.Serving;
using TernToolCall = Tern.Tokenization.ChatToolCall;
using TernChat = Tern.Tokenization.ChatMessage;

namespace Tern.Tests.Structured;

/// <summary>
/// Tools through the chat template: a fixture model (random weights) whose ChatML template has Qwen2.5's tool layout; the
/// official OpenAI SDK forces a call (tool_choice a function, and "required" streamed) and reads it back as tool_calls with
/// finish reason tool_calls, arguments valid under the function's parameters; tool turns render as the template does; a
/// template without tools answers tools with a 400 naming the field; replies are parsed in the Hermes and Llama 3.1 formats.
/// </summary>
public sealed class ToolCallTests() : ServedModel(new ServingFixture(ToolsTemplate, context: 2048), new ServingOptions { MaxBatchSize = 4, MaxNewTokens = 128 }) // the tools' system turn alone is ~500 byte-level tokens
{
    /// <summary>Qwen2.5's template, shortened to what Tern detects: ChatML that refers to tools.</summary>
    const string ToolsTemplate = "{%- if tools %}{{- '<|im_start|>system\\n' }}{{- '# Tools' }}{%- for tool in tools %}{{- tool | tojson }}{%- endfor %}" +
        "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}" +
        "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor %}" +
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

    /// <summary>The tools both template families are tested with (<see cref="Llama3ToolCallTests"/> too).</summary>
    internal const string Parameters = """
        {"type":"object","properties":{"city":{"type":"string"},"unit":{"enum":["celsius","fahrenheit"]}},"required":["city","unit"],"additionalProperties":false}
        """;

    internal static readonly ChatTool Weather = ChatTool.CreateFunctionTool("get_weather", "The weather in a city.", BinaryData.FromString(Parameters));
    internal static readonly ChatTool Time = ChatTool.CreateFunctionTool("get_time", "The time in a city.", BinaryData.FromString("""{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"""));

    internal static void AssertArguments(string arguments) =>
        Assert.True(JsonSchema.FromText(Parameters).Evaluate(JsonDocument.Parse(arguments).RootElement).IsValid, arguments);

    [Fact]
    public async Task TheSdkReadsAForcedToolCall()
    {
        var options = new ChatCompletionOptions { Temperature = 1, MaxOutputTokenCount = 120, Tools = { Weather, Time }, ToolChoice = ChatToolChoice.CreateFunctionChoice("get_weather") };
        ChatCompletion completion = await Chat().CompleteChatAsync(new OpenAI.Chat.ChatMessage[] { new UserChatMessage("Weather in Paris?") }, options, Ct);
        Assert.Equal(ChatFinishReason.ToolCalls, completion.FinishReason);
        var call = Assert.Single(completion.ToolCalls);
        Assert.Equal("get_weather", call.FunctionName);
        Assert.StartsWith("call_", call.Id);
        AssertArguments(call.FunctionArguments.ToString());

        // The call and its result go back in the conversation (rendered as the template does), streamed with "required".
        var conversation = new OpenAI.Chat.ChatMessage[]
        {
            new UserChatMessage("Weather in Paris?"), new AssistantChatMessage(completion.ToolCalls), new ToolChatMessage(call.Id, "{\"temperature\": 21}"),
            new UserChatMessage("And in Rome?"),
        };
        var required = new ChatCompletionOptions { Temperature = 1, MaxOutputTokenCount = 120, Tools = { Weather }, ToolChoice = ChatToolChoice.CreateRequiredChoice() };
        var name = new StringBuilder();
        var arguments = new StringBuilder();
        ChatFinishReason? finish = null;
        await foreach (var update in Chat().CompleteChatStreamingAsync(conversation, required, Ct))
        {
            foreach (var part in update.ToolCallUpdates)
            {
                name.Append(part.FunctionName);
                arguments.Append(part.FunctionArgumentsUpdate?.ToString());
            }
            finish ??= update.FinishReason;
        }
        Assert.Equal(ChatFinishReason.ToolCalls, finish);
        Assert.Equal("get_weather", name.ToString());
        AssertArguments(arguments.ToString());
    }

    /// <summary>A streamed call arrives as OpenAI streams it: a chunk with the call's index, id, type and name (arguments
    /// empty), then its arguments, in several chunks when the model wrote the name first (the constraint lets it write
    /// the arguments first: then they come whole once the call ends), then the finish reason tool_calls.</summary>
    [Fact]
    public async Task AStreamedCallSendsItsNameThenItsArgumentsInPieces()
    {
        int streamed = 0;
        for (int seed = 1; seed <= 4; seed++)
        {
            using var content = new StringContent($$$"""
                {"model":"tiny","stream":true,"temperature":1,"seed":{{{seed}}},"max_tokens":120,"messages":[{"role":"user","content":"Weather?"}],
                 "tools":[{"type":"function","function":{"name":"get_weather","parameters":{{{Parameters}}}}}],"tool_choice":"required"}
                """, Encoding.UTF8, "application/json");
            using var response = await Http.PostAsync(new Uri(Server.Address, "/v1/chat/completions"), content, Ct);
            var chunks = (await response.Content.ReadAsStringAsync(Ct)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries)
                .Select(e => e["data: ".Length..]).Where(d => d != "[DONE]").Select(d => JsonDocument.Parse(d).RootElement.GetProperty("choices")[0]).ToList();
            var calls = chunks.Where(c => c.GetProperty("delta").TryGetProperty("tool_calls", out _)).Select(c => c.GetProperty("delta").GetProperty("tool_calls")[0]).ToList();
            var first = calls[0];
            Assert.Equal(0, first.GetProperty("index").GetInt32());
            Assert.StartsWith("call_", first.GetProperty("id").GetString());
            Assert.Equal("get_weather", first.GetProperty("function").GetProperty("name").GetString());
            Assert.Equal("", first.GetProperty("function").GetProperty("arguments").GetString());
            Assert.All(calls.Skip(1), c => Assert.False(c.TryGetProperty("id", out _)));
            AssertArguments(string.Concat(calls.Skip(1).Select(c => c.GetProperty("function").GetProperty("arguments").GetString())));
            Assert.Equal("tool_calls", chunks[^1].GetProperty("finish_reason").GetString());
            if (calls.Count > 3) streamed++;
        }
        Assert.True(streamed > 0, "no call's arguments came in pieces");
    }

    [Fact]
    public async Task TheChatClientReturnsFunctionCalls()
    {
        using var client = new TernChatClient(Fixture.Engine);
        Microsoft.Extensions.AI.IChatClient chat = client;
        var weather = Microsoft.Extensions.AI.AIFunctionFactory.Create((string city, int days) => $"sunny in {city} for {days} days", "get_weather");
        var options = new Microsoft.Extensions.AI.ChatOptions
        {
            Temperature = 1, Seed = 2, MaxOutputTokens = 100, Tools = [weather], ToolMode = Microsoft.Extensions.AI.ChatToolMode.RequireSpecific("get_weather"),
        };
        var history = new List<Microsoft.Extensions.AI.ChatMessage> { new(Microsoft.Extensions.AI.ChatRole.User, "Weather in Paris?") };
        var response = await chat.GetResponseAsync(history, options, Ct);
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.ToolCalls, response.FinishReason);
        var call = Assert.Single(response.Messages.SelectMany(m => m.Contents).OfType<Microsoft.Extensions.AI.FunctionCallContent>());
        Assert.Equal("get_weather", call.Name);
        Assert.Contains("city", call.Arguments!.Keys); // required by the function's schema (which leaves other keys open)
        Assert.Contains("days", call.Arguments.Keys);

        // The call and its result go back into the conversation; tool mode none reads the reply as text.
        history.AddRange(response.Messages);
        history.Add(new Microsoft.Extensions.AI.ChatMessage(Microsoft.Extensions.AI.ChatRole.Tool, [new Microsoft.Extensions.AI.FunctionResultContent(call.CallId, "sunny")]));
        var text = await chat.GetResponseAsync(history, new Microsoft.Extensions.AI.ChatOptions { MaxOutputTokens = 8, Tools = [weather], ToolMode = Microsoft.Extensions.AI.ChatToolMode.None }, Ct);
        Assert.NotEqual(Microsoft.Extensions.AI.ChatFinishReason.ToolCalls, text.FinishReason);
    }

    [Fact]
    public async Task TheChatClientStreamsAReplyWithACall()
    {
        using var client = new TernChatClient(Fixture.Engine);
        Microsoft.Extensions.AI.IChatClient chat = client;
        var weather = Microsoft.Extensions.AI.AIFunctionFactory.Create((string city) => $"sunny in {city}", "get_weather");
        var options = new Microsoft.Extensions.AI.ChatOptions
        {
            Temperature = 1, Seed = 5, MaxOutputTokens = 100, Tools = [weather], ToolMode = Microsoft.Extensions.AI.ChatToolMode.RequireAny,
        };
        var updates = new List<Microsoft.Extensions.AI.ChatResponseUpdate>();
        await foreach (var update in chat.GetStreamingResponseAsync([new Microsoft.Extensions.AI.ChatMessage(Microsoft.Extensions.AI.ChatRole.User, "Weather in Oslo?")], options, Ct))
            updates.Add(update);
        var response = Microsoft.Extensions.AI.ChatResponseExtensions.ToChatResponse(updates);
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.ToolCalls, response.FinishReason);
        var call = Assert.Single(response.Messages.SelectMany(m => m.Contents).OfType<Microsoft.Extensions.AI.FunctionCallContent>());
        Assert.Equal("get_weather", call.Name);
        Assert.Null(call.Exception);
        Assert.Contains("city", call.Arguments!.Keys);
        Assert.Equal("", response.Text); // a forced call has no text
    }

    [Fact]
    public void ToolTurnsRenderAsQwensTemplate()
    {
        var formatter = Fixture.Tokenizer.CreateChatFormatter();
        Assert.True(formatter.Template.SupportsTools);
        using var tool = JsonDocument.Parse("""{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}""");
        string prompt = formatter.Format(new[]
        {
            TernChat.User("Time?"),
            new TernChat("assistant", "") { ToolCalls = new[] { new TernToolCall("get_time", """{"city":"Paris"}""") } },
            new TernChat("tool", "12:00"), new TernChat("tool", "13:00"),
        }, addGenerationPrompt: true, new[] { tool.RootElement });
        Assert.Equal("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" +
            "{\"type\": \"function\", \"function\": {\"name\": \"get_time\", \"parameters\": {\"type\": \"object\"}}}\n</tools>\n\n" +
            "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n" +
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" +
            "<|im_start|>user\nTime?<|im_end|>\n" +
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n" +
            "<|im_start|>user\n<tool_response>\n12:00\n</tool_response>\n<tool_response>\n13:00\n</tool_response><|im_end|>\n" +
            "<|im_start|>assistant\n", prompt);
    }

    [Fact]
    public void RepliesAreParsedInTheCommonFormats()
    {
        var functions = new[] { new ToolFunction("get_time", null) };
        var (content, calls) = ToolCalls.Parse("Let me check.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>", functions);
        Assert.Equal("Let me check.", content);
        Assert.Equal(new TernToolCall("get_time", "{\"city\":\"Oslo\"}"), Assert.Single(calls));
        (content, calls) = ToolCalls.Parse("<|python_tag|>{\"name\": \"get_time\", \"parameters\": {\"city\": \"Lima\"}}", functions);
        Assert.Null(content);
        Assert.Equal("get_time", Assert.Single(calls).Name);
        (content, calls) = ToolCalls.Parse("<tool_call>{\"name\": \"unknown\", \"arguments\": {}}</tool_call>", functions);
        Assert.Empty(calls);
        Assert.StartsWith("<tool_call>", content);
    }

    [Theory]
    [InlineData(true, "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]", "tools")] // template without tools
    [InlineData(false, "\"tools\":[{\"type\":\"code\"}]", "tools[0].type")]
    [InlineData(false, "\"tools\":[{\"type\":\"function\",\"function\":{}}]", "tools[0].function.name")]
    [InlineData(false, "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}}", "tool_choice")]
    [InlineData(false, "\"tool_choice\":\"required\"", "tool_choice")]
    [InlineData(false, "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"patternProperties\":{}}}}],\"tool_choice\":\"required\"", "tools")]
    public async Task BadToolRequestsAreRefusedNamingTheField(bool plainTemplate, string fields, string param)
    {
        await using var plain = plainTemplate ? new ServingFixture() : null;
        var address = plain is null ? null : (await plain.ServeAsync(new ServingOptions(), new ServerOptions { Port = 0, ModelId = "tiny" }, Ct)).Address;
        await AssertRefused(fields, param, address: address);
    }
}
