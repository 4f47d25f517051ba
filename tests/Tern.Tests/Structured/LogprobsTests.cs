using System.Net;
using System.Text;
using System.Text.Json;
using Tern.Evaluation;
using Tern.Generation;
using Tern.Serving;
using Tern.Tests.Serving;

namespace Tern.Tests.Structured;

/// <summary>
/// Logprobs (generated tokens) and echo scores (prompt tokens) equal the per-token scores of <see cref="TeacherForcing"/>
/// (what <c>tern eval</c> scores with) for the same text, through the generator, the engine and the HTTP server, streamed
/// or not; limits are refused with a 400 naming the field.
/// </summary>
public sealed class LogprobsTests() : ServedModel(new ServingFixture(), new ServingOptions { MaxBatchSize = 4, MaxNewTokens = 64 })
{
    const float Tolerance = 2e-4f; // one full prefill against one-token steps: fp32 rounding only

    /// <summary>TeacherForcing's log p of every token of <paramref name="tokens"/> after the first <paramref name="prefix"/>.</summary>
    float[] Eval(IReadOnlyList<int> tokens, int prefix) =>
        TeacherForcing.Score(Fixture.Model, new[] { tokens }, new TeacherForcingOptions { PrefixLength = prefix }, Ct).LogProbs[0];

    [Fact]
    public async Task GeneratedTokensCarryTheirEvalScoresInTheGeneratorAndTheEngine()
    {
        var prompt = Fixture.Tokenizer.Encode(ServingFixture.Prompts[1]);
        // Sampled (temperature 0.8): logprobs are of the raw distribution, not of the one sampled from.
        var options = new GenerationOptions { MaxNewTokens = 12, Temperature = 0.8, Seed = 5, Logprobs = 3, IgnoreEos = true };
        var generated = new Generator(Fixture.Model, Fixture.Tokenizer).GenerateTokens(new[] { prompt }, options, Ct).Sequences[0];
        var served = await Fixture.Engine.Submit(prompt, options, Ct).Completion;
        foreach (var output in new[] { generated, served })
        {
            var logprobs = Assert.IsAssignableFrom<IReadOnlyList<TokenLogprob>>(output.Logprobs);
            Assert.Equal(output.Tokens, logprobs.Select(l => l.TokenId));
            var expected = Eval(prompt.Concat(output.Tokens).ToArray(), prompt.Count);
            for (int i = 0; i < output.Tokens.Count; i++)
            {
                Assert.Equal(expected[i], logprobs[i].Logprob, Tolerance);
                var top = logprobs[i].Top;
                Assert.Equal(3, top.Count);
                Assert.True(top[0].Logprob >= top[1].Logprob && top[1].Logprob >= top[2].Logprob);
                Assert.True(top[0].Logprob >= logprobs[i].Logprob - 1e-6);
            }
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public async Task EchoScoresThePromptAsEvalDoes(int maxTokens)
    {
        string prompt = ServingFixture.Prompts[3];
        var tokens = Fixture.Tokenizer.Encode(prompt);
        var expected = Eval(tokens, 1);
        var (status, body) = await Post("/v1/completions",
            $$"""{"model":"tiny","prompt":"{{prompt}}","max_tokens":{{maxTokens}},"echo":true,"logprobs":2,"temperature":0}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var choice = body.GetProperty("choices")[0];
        Assert.StartsWith(prompt, choice.GetProperty("text").GetString());
        var logprobs = choice.GetProperty("logprobs");
        var scores = logprobs.GetProperty("token_logprobs").EnumerateArray().ToArray();
        Assert.Equal(tokens.Count + maxTokens, scores.Length);
        Assert.Equal(JsonValueKind.Null, scores[0].ValueKind);
        Assert.Equal(JsonValueKind.Null, logprobs.GetProperty("top_logprobs")[0].ValueKind);
        for (int i = 1; i < tokens.Count; i++) Assert.Equal(expected[i - 1], scores[i].GetSingle(), Tolerance);
        Assert.Equal(2, logprobs.GetProperty("top_logprobs")[1].EnumerateObject().Count());
        var offsets = logprobs.GetProperty("text_offset").EnumerateArray().Select(o => o.GetInt32()).ToArray();
        Assert.Equal(0, offsets[0]);
        Assert.True(offsets.Zip(offsets.Skip(1)).All(p => p.First <= p.Second));
        Assert.Equal(maxTokens, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Fact]
    public async Task ChatLogprobsStreamedEqualTheWholeReply()
    {
        const string messages = """[{"role":"user","content":"Hello, who are you?"}]""";
        var (status, whole) = await Post("/v1/chat/completions",
            $$"""{"model":"tiny","messages":{{messages}},"max_tokens":10,"temperature":0,"logprobs":true,"top_logprobs":2}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var content = whole.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("content").EnumerateArray().ToArray();
        Assert.Equal(whole.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), content.Length);
        Assert.All(content, c =>
        {
            Assert.Equal(2, c.GetProperty("top_logprobs").GetArrayLength());
            Assert.True(c.GetProperty("bytes").GetArrayLength() > 0 || c.GetProperty("token").GetString()!.Length > 0);
        });
        // Every generated token but a trailing stop token carries text: the bytes spell the reply.
        string reply = whole.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        var bytes = content.SelectMany(c => c.GetProperty("bytes").EnumerateArray().Select(b => (byte)b.GetInt32())).ToArray();
        Assert.StartsWith(reply, Encoding.UTF8.GetString(bytes));

        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(Server.Address, "/v1/chat/completions"))
        {
            Content = new StringContent($$"""{"model":"tiny","messages":{{messages}},"max_tokens":10,"temperature":0,"logprobs":true,"top_logprobs":2,"stream":true}""",
                Encoding.UTF8, "application/json"),
        };
        using var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
        var events = await ServerSentEvents.ReadAll(await response.Content.ReadAsStreamAsync(Ct), Ct);
        var streamed = events[..^1].Select(e => JsonDocument.Parse(e).RootElement.GetProperty("choices")[0].GetProperty("logprobs"))
            .Where(l => l.ValueKind == JsonValueKind.Object).SelectMany(l => l.GetProperty("content").EnumerateArray()).ToArray();
        Assert.Equal(content.Select(c => (c.GetProperty("token").GetString(), c.GetProperty("logprob").GetSingle())),
            streamed.Select(c => (c.GetProperty("token").GetString(), c.GetProperty("logprob").GetSingle())));
    }

    [Theory]
    [InlineData("/v1/chat/completions", "\"logprobs\":true,\"top_logprobs\":21", "top_logprobs")]
    [InlineData("/v1/chat/completions", "\"logprobs\":true,\"top_logprobs\":-1", "top_logprobs")]
    [InlineData("/v1/chat/completions", "\"top_logprobs\":2", "top_logprobs")]
    [InlineData("/v1/chat/completions", "\"logprobs\":3", "logprobs")]
    [InlineData("/v1/completions", "\"logprobs\":21", "logprobs")]
    [InlineData("/v1/completions", "\"logprobs\":true", "logprobs")]
    [InlineData("/v1/completions", "\"echo\":\"yes\"", "echo")]
    [InlineData("/v1/completions", "\"max_tokens\":0", "max_tokens")]
    public async Task LimitsAreRefusedNamingTheField(string path, string fields, string param) => await AssertRefused(fields, param, path);
}
