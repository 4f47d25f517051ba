using System.Text;
using System.Text.Json;
using Json.Schema;
using OpenAI.Chat;
using Tern.Serving;
using Tern.Tests.Serving;

namespace Tern.Tests.Structured;

/// <summary>
/// Tools through Llama 3.1's own template (the published text, tests/fixtures/chat-templates) on the fixture model: the
/// official OpenAI SDK forces a call (a named function, then "required" streamed after a call and its result went back into
/// the conversation) and reads it as tool_calls, arguments valid under the function's parameters; what the template refuses
/// (two calls in one turn) is a 400 naming messages; Llama 3.0's template, which has no tools, answers tools with a 400.
/// </summary>
public sealed class Llama3ToolCallTests() : ServedModel(new ServingFixture(Llama31, context: 2048), new ServingOptions { MaxBatchSize = 4, MaxNewTokens = 128 })
{
    static readonly string Llama31 = File.ReadAllText(Path.Combine(Fixtures.Root, "chat-templates", "llama-3.1-instruct.jinja"));

    static readonly ChatTool Weather = ToolCallTests.Weather, Time = ToolCallTests.Time;

    static void AssertArguments(string arguments) => ToolCallTests.AssertArguments(arguments);

    [Fact]
    public async Task TheSdkReadsAForcedToolCall()
    {
        Assert.Equal("parameters", Fixture.Engine.ChatTemplate.ToolCallArguments);
        var options = new ChatCompletionOptions { Temperature = 1, MaxOutputTokenCount = 120, Tools = { Weather, Time }, ToolChoice = ChatToolChoice.CreateFunctionChoice("get_weather") };
        ChatCompletion completion = await Chat().CompleteChatAsync(new OpenAI.Chat.ChatMessage[] { new UserChatMessage("Weather in Paris?") }, options, Ct);
        Assert.Equal(OpenAI.Chat.ChatFinishReason.ToolCalls, completion.FinishReason);
        var call = Assert.Single(completion.ToolCalls);
        Assert.Equal("get_weather", call.FunctionName);
        AssertArguments(call.FunctionArguments.ToString());

        var conversation = new OpenAI.Chat.ChatMessage[]
        {
            new SystemChatMessage("Be brief."), new UserChatMessage("Weather in Paris?"), new AssistantChatMessage(completion.ToolCalls),
            new ToolChatMessage(call.Id, "{\"temperature\": 21}"), new UserChatMessage("And in Rome?"),
        };
        var required = new ChatCompletionOptions { Temperature = 1, MaxOutputTokenCount = 120, Tools = { Weather }, ToolChoice = ChatToolChoice.CreateRequiredChoice() };
        var name = new StringBuilder();
        var arguments = new StringBuilder();
        OpenAI.Chat.ChatFinishReason? finish = null;
        await foreach (var update in Chat().CompleteChatStreamingAsync(conversation, required, Ct))
        {
            foreach (var part in update.ToolCallUpdates)
            {
                name.Append(part.FunctionName);
                arguments.Append(part.FunctionArgumentsUpdate?.ToString());
            }
            finish ??= update.FinishReason;
        }
        Assert.Equal(OpenAI.Chat.ChatFinishReason.ToolCalls, finish);
        Assert.Equal("get_weather", name.ToString());
        AssertArguments(arguments.ToString());
    }

    [Fact]
    public async Task TheChatClientForcesACallInTheTemplatesFormat()
    {
        using var client = new TernChatClient(Fixture.Engine);
        Microsoft.Extensions.AI.IChatClient chat = client;
        var weather = Microsoft.Extensions.AI.AIFunctionFactory.Create((string city) => $"sunny in {city}", "get_weather");
        var response = await chat.GetResponseAsync([new Microsoft.Extensions.AI.ChatMessage(Microsoft.Extensions.AI.ChatRole.User, "Weather in Oslo?")],
            new Microsoft.Extensions.AI.ChatOptions { Seed = 3, MaxOutputTokens = 100, Tools = [weather], ToolMode = Microsoft.Extensions.AI.ChatToolMode.RequireAny }, Ct);
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.ToolCalls, response.FinishReason);
        var call = Assert.Single(response.Messages.SelectMany(m => m.Contents).OfType<Microsoft.Extensions.AI.FunctionCallContent>());
        Assert.Equal("get_weather", call.Name);
        Assert.Contains("city", call.Arguments!.Keys);
    }

    [Fact]
    public async Task TwoCallsInOneTurnAreRefusedNamingMessages()
    {
        const string call = """{"type":"function","function":{"name":"get_time","arguments":"{}"}}""";
        var (status, body) = await Post("/v1/chat/completions", $$$"""
            {"model":"tiny","messages":[{"role":"user","content":"Time?"},{"role":"assistant","tool_calls":[{{{call}}},{{{call}}}]},{"role":"tool","content":"12:00"}],
             "tools":[{"type":"function","function":{"name":"get_time"}}]}
            """);
        Assert.Equal(System.Net.HttpStatusCode.BadRequest, status);
        Assert.Equal("messages", body.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains("one tool call per assistant message", body.GetProperty("error").GetProperty("message").GetString());
    }

    [Fact]
    public async Task Llama30TemplateRefusesTools()
    {
        const string llama30 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + " +
            "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}";
        await using var fixture = new ServingFixture(llama30);
        var address = (await fixture.ServeAsync(new ServingOptions(), new Tern.Server.ServerOptions { Port = 0, ModelId = "tiny" }, Ct)).Address;
        string message = await AssertRefused("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]", "tools", address: address);
        Assert.Contains("does not render tools", message);
    }
}
