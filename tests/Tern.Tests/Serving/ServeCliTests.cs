using System.Net.Http.Json;
using System.Text.Json;
using Tern.Cli;
using Tern.Server;
using Tern.Serving;

namespace Tern.Tests.Serving;

/// <summary>The CLI side: greedy text from the server equals what <c>tern generate</c> prints for the same prompt, alone and
/// with concurrent requests; <c>tern serve</c> refuses impossible limits at parse time.</summary>
public sealed class ServeCliTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static (int Code, string Out, string Error) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var previous = Console.Out;
        Console.SetOut(output);
        try
        {
            return (Program.Run(args, error), output.ToString(), error.ToString());
        }
        finally
        {
            Console.SetOut(previous);
        }
    }

    [Fact]
    public async Task ServerGreedyTextEqualsTernGenerateAloneAndUnderConcurrency()
    {
        using var fixture = new ServingFixture();
        var prompts = ServingFixture.Prompts.Take(4).ToArray();
        var printed = prompts.Select(p =>
        {
            var (code, output, error) = Run("generate", p, "--model", fixture.Folder, "--device", "cpu", "--max-new-tokens", "20");
            Assert.True(code == 0, error);
            return output.TrimEnd('\n');
        }).ToArray();

        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer);
        await using var server = await TernServer.StartAsync(engine, new ServerOptions { Port = 0 }, Ct);
        using var http = new HttpClient();
        async Task<string> Complete(string prompt)
        {
            using var response = await http.PostAsJsonAsync(new Uri(server.Address, "/v1/completions"),
                new { model = "tern", prompt, max_tokens = 20, temperature = 0 }, Ct);
            using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct));
            return prompt + json.RootElement.GetProperty("choices")[0].GetProperty("text").GetString();
        }
        Assert.Equal(printed[0], await Complete(prompts[0]));
        Assert.Equal(printed.Concat(printed), await Task.WhenAll(prompts.Concat(prompts).Select(Complete)));
    }

    [Theory]
    [InlineData("--max-batch 0", "tern: --max-batch must be at least 1 (got 0).")]
    [InlineData("--max-tokens 0", "tern: --max-tokens must be at least 1 (got 0).")]
    [InlineData("--host example.com", "tern: --host must be an IP address or localhost (got 'example.com').")]
    [InlineData("--port 70000", "tern: --port must be in [0, 65535] (got 70000).")]
    public void ImpossibleServeLimitsStopTheParse(string flags, string message)
    {
        var (code, _, error) = Run(new[] { "serve", "--model", "no-such-folder" }.Concat(flags.Split(' ')).ToArray());
        Assert.Equal(2, code);
        Assert.Equal(message, error.Split('\n')[0].TrimEnd('\r'));
    }
}
