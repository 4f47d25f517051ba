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

    /// <summary>
    /// <c>kill -TERM</c> of a real <c>tern serve</c> process with a stream in flight (issue 18: clients got a libtorch assert as
    /// a 500, the process exited 143): the stream ends whole with its finish reason, a request after the signal gets 503 with
    /// Retry-After, and the process exits 0.
    /// </summary>
    [Fact]
    public async Task SigtermDrainsTheRequestsInFlightAndExitsZero()
    {
        if (!OperatingSystem.IsLinux()) return;
        using var fixture = new ServingFixture();
        string cli = Path.Combine(AppContext.BaseDirectory, "Tern.Cli.dll");
        var start = new System.Diagnostics.ProcessStartInfo("dotnet")
        {
            ArgumentList = { cli, "serve", "--model", fixture.Folder, "--model-id", "tern", "--device", "cpu", "--port", "0", "--drain-timeout", "60" },
            RedirectStandardError = true, RedirectStandardOutput = true,
        };
        using var process = System.Diagnostics.Process.Start(start)!;
        try
        {
            var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
            var address = new TaskCompletionSource<Uri>();
            process.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is null) return;
                log.Enqueue(e.Data);
                var match = System.Text.RegularExpressions.Regex.Match(e.Data, @" at (http://\S+/)v1 ");
                if (match.Success) address.TrySetResult(new Uri(match.Groups[1].Value));
            };
            process.BeginErrorReadLine();
            process.BeginOutputReadLine();
            var server = await address.Task.WaitAsync(TimeSpan.FromSeconds(60), Ct);

            using var http = new HttpClient();
            using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(server, "v1/completions"))
            {
                Content = JsonContent.Create(new { model = "tern", prompt = "Once upon a time", max_tokens = 480, stream = true, ignore_eos = true, temperature = 0 }),
            };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
            var stream = await response.Content.ReadAsStreamAsync(Ct);
            var events = ServerSentEvents.Read(stream, Ct).GetAsyncEnumerator(Ct);
            Assert.True(await events.MoveNextAsync()); // the stream is running
            System.Diagnostics.Process.Start("kill", $"-TERM {process.Id}")!.WaitForExit();
            await ServingEngineTests.WaitFor(() => log.Any(l => l.StartsWith("stopping:", StringComparison.Ordinal)), 30, () => string.Join("\n", log));
            Assert.Contains(log, l => l.Contains("; 1 running or waiting may finish", StringComparison.Ordinal)); // the signal came mid-stream

            using (var late = await http.PostAsync(new Uri(server, "v1/completions"), JsonContent.Create(new { model = "tern", prompt = "hi" }), Ct))
            {
                Assert.Equal(System.Net.HttpStatusCode.ServiceUnavailable, late.StatusCode);
                Assert.NotNull(late.Headers.RetryAfter);
            }
            var rest = new List<string> { events.Current };
            while (await events.MoveNextAsync()) rest.Add(events.Current);
            Assert.Equal("[DONE]", rest[^1]);
            var last = JsonDocument.Parse(rest[^2]).RootElement.GetProperty("choices")[0];
            Assert.Equal("length", last.GetProperty("finish_reason").GetString());
            Assert.DoesNotContain(rest, e => e.Contains("\"error\"", StringComparison.Ordinal));
            Assert.True(process.WaitForExit(TimeSpan.FromSeconds(60)), string.Join("\n", log));
            Assert.True(process.ExitCode == 0, $"exit {process.ExitCode}: {string.Join("\n", log)}");
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    /// <summary><c>tern serve --soft-prompt FILE --soft-prompt NAME=FILE</c>, a real process, in memory and offloaded: a request
    /// without <c>soft_prompt</c> gets the text <c>tern generate --soft-prompt FILE</c> prints (with the same <c>--offload</c>),
    /// one naming the other prompt the text generate prints with that one, one naming "none" the text generate prints without
    /// a prompt; the start-up line lists them.</summary>
    [Theory]
    [InlineData(null)]
    [InlineData("w=0/100/0,kv=0/100/0,act=0/100/0,gbs=2,ngb=2")]
    public async Task ServedSoftPromptsGiveTernGeneratesText(string? offload)
    {
        var offloading = offload is null ? Array.Empty<string>() : new[] { "--offload", offload };
        using var fixture = new ServingFixture();
        using var dir = new TempDir();
        string seven = dir.File("seven.safetensors"), four = dir.File("four.safetensors");
        var generator = new TorchSharp.torch.Generator(8);
        foreach (var (path, n) in new[] { (seven, 7), (four, 4) })
        {
            using var vectors = TorchSharp.torch.randn(new long[] { n, fixture.Model.TokenEmbeddingWidth }, generator: generator);
            using var prompt = Tern.Prompting.SoftPrompt.FromTensor(vectors);
            prompt.Save(path);
        }
        string text = ServingFixture.Prompts[1];
        string Generate(string? file)
        {
            var (code, output, error) = Run(new[] { "generate", text, "--model", fixture.Folder, "--device", "cpu", "--max-new-tokens", "16" }
                .Concat(file is null ? Array.Empty<string>() : new[] { "--soft-prompt", file }).Concat(offloading).ToArray());
            Assert.True(code == 0, error);
            return output.TrimEnd('\n');
        }
        string withSeven = Generate(seven), withFour = Generate(four), plain = Generate(null);
        Assert.NotEqual(withSeven, withFour);
        Assert.NotEqual(withSeven, plain);

        string cli = Path.Combine(AppContext.BaseDirectory, "Tern.Cli.dll");
        var start = new System.Diagnostics.ProcessStartInfo("dotnet")
        {
            RedirectStandardError = true, RedirectStandardOutput = true,
        };
        foreach (string arg in new[] { cli, "serve", "--model", fixture.Folder, "--model-id", "tern", "--device", "cpu", "--port", "0", "--soft-prompt", seven, "--soft-prompt", $"four={four}" }
            .Concat(offloading)) start.ArgumentList.Add(arg);
        using var process = System.Diagnostics.Process.Start(start)!;
        try
        {
            var started = new TaskCompletionSource<string>();
            process.ErrorDataReceived += (_, e) => { if (e.Data?.Contains(" at http://", StringComparison.Ordinal) == true) started.TrySetResult(e.Data); };
            process.BeginErrorReadLine();
            process.BeginOutputReadLine();
            string line = await started.Task.WaitAsync(TimeSpan.FromSeconds(60), Ct);
            Assert.Contains("soft prompt of 7 vectors before every request, soft prompts by body field soft_prompt: four (4)", line);
            var server = new Uri(System.Text.RegularExpressions.Regex.Match(line, @" at (http://\S+/)v1 ").Groups[1].Value);
            using var http = new HttpClient();
            async Task<string> Complete(string? softPrompt)
            {
                object body = softPrompt is null ? new { model = "tern", prompt = text, max_tokens = 16, temperature = 0 }
                    : new { model = "tern", prompt = text, max_tokens = 16, temperature = 0, soft_prompt = softPrompt };
                using var response = await http.PostAsJsonAsync(new Uri(server, "v1/completions"), body, Ct);
                using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct));
                return text + json.RootElement.GetProperty("choices")[0].GetProperty("text").GetString();
            }
            Assert.Equal(withSeven, await Complete(null));
            Assert.Equal(withFour, await Complete("four"));
            Assert.Equal(plain, await Complete("none"));
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
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
