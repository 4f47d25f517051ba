using System.Text.Json;
using Json.Schema;
using Microsoft.Extensions.AI;
using AIFormat = Microsoft.Extensions.AI.ChatResponseFormat;
using SdkFormat = OpenAI.Chat.ChatResponseFormat;
using OpenAI.Chat;
using Tern.Serving;
using Tern.Tests.Serving;

namespace Tern.Tests.Structured;

/// <summary>
/// The official OpenAI .NET SDK against an in-process <c>tern serve</c> (random-weight fixture model): logprobs, a JSON-schema
/// reply (valid whatever the weights), json_object, the same through <see cref="TernChatClient"/>'s
/// <see cref="ChatOptions.ResponseFormat"/>; bad response formats get a 400 naming the field.
/// </summary>
public sealed class StructuredServerTests() : ServedModel(new ServingFixture(), new ServingOptions { MaxBatchSize = 4, MaxNewTokens = 256 })
{
    const string Schema = """
        {"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"},"unit":{"enum":["c","f"]},
          "hours":{"type":"array","items":{"type":"number"},"minItems":1,"maxItems":3}},
         "required":["city","days","unit","hours"],"additionalProperties":false}
        """;

    static void AssertValid(string schema, string text)
    {
        using var document = JsonDocument.Parse(text);
        Assert.True(JsonSchema.FromText(schema).Evaluate(document.RootElement).IsValid, text);
    }

#pragma warning disable OPENAI001 // ChatCompletionOptions.Seed: the SDK marks it experimental
    [Fact]
    public async Task TheSdkReadsLogprobsAndASchemaReply()
    {
        var messages = new OpenAI.Chat.ChatMessage[] { new UserChatMessage("Weather for Paris as JSON.") };
        ChatCompletion scored = await Chat().CompleteChatAsync(messages,
            new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 8, IncludeLogProbabilities = true, TopLogProbabilityCount = 3 }, Ct);
        Assert.Equal(scored.Usage.OutputTokenCount, scored.ContentTokenLogProbabilities.Count);
        Assert.All(scored.ContentTokenLogProbabilities, t =>
        {
            Assert.True(t.LogProbability <= 0);
            Assert.Equal(3, t.TopLogProbabilities.Count);
            Assert.True(t.TopLogProbabilities[0].LogProbability >= t.LogProbability - 1e-5);
        });

        for (int seed = 0; seed < 3; seed++)
        {
            var options = new ChatCompletionOptions
            {
                Temperature = 1, Seed = seed, MaxOutputTokenCount = 200,
                ResponseFormat = SdkFormat.CreateJsonSchemaFormat("weather", BinaryData.FromString(Schema), jsonSchemaIsStrict: true),
            };
            ChatCompletion reply = await Chat().CompleteChatAsync(messages, options, Ct);
            AssertValid(Schema, reply.Content[0].Text);
        }
        var anyObject = new ChatCompletionOptions { Temperature = 1, Seed = 9, MaxOutputTokenCount = 64, ResponseFormat = SdkFormat.CreateJsonObjectFormat() };
        ChatCompletion json = await Chat().CompleteChatAsync(messages, anyObject, Ct);
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(json.Content[0].Text).RootElement.ValueKind);
    }
#pragma warning restore OPENAI001

    [Fact]
    public async Task TheChatClientHonoursResponseFormat()
    {
        using var client = new TernChatClient(Fixture.Engine);
        IChatClient chat = client;
        var reply = await chat.GetResponseAsync("Weather for Paris as JSON.",
            new ChatOptions { Temperature = 1, Seed = 3, MaxOutputTokens = 200, ResponseFormat = AIFormat.ForJsonSchema(JsonDocument.Parse(Schema).RootElement, "weather") }, Ct);
        AssertValid(Schema, reply.Text);
        var any = await chat.GetResponseAsync("Anything.", new ChatOptions { Temperature = 1, Seed = 4, MaxOutputTokens = 64, ResponseFormat = AIFormat.Json }, Ct);
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(any.Text).RootElement.ValueKind);
    }

    [Theory]
    [InlineData("\"response_format\":\"json\"", "response_format")]
    [InlineData("\"response_format\":{\"type\":\"xml\"}", "response_format.type")]
    [InlineData("\"response_format\":{\"type\":\"json_schema\"}", "response_format.json_schema")]
    [InlineData("\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\"}}", "response_format.json_schema.schema")]
    [InlineData("\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":{\"type\":\"string\",\"pattern\":\"a+\"}}}", "response_format.json_schema.schema")]
    [InlineData("\"response_format\":{\"type\":\"json_object\"},\"ignore_eos\":true", "ignore_eos")]
    [InlineData("\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":{\"type\":\"string\",\"minLength\":3,\"maxLength\":2}}}", "response_format.json_schema.schema")]
    public async Task BadResponseFormatsAreRefusedNamingTheField(string fields, string param)
    {
        string message = await AssertRefused(fields, param);
        if (fields.Contains("pattern")) Assert.Contains("'pattern'", message);
        if (fields.Contains("minLength")) Assert.Contains("minLength 3 is more than maxLength 2", message);
    }
}
