using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using Tern.Generation;
using Tern.Server;
using Tern.Serving;

namespace Tern.Tests.Serving;

/// <summary>
/// Load on loopback, bounded in count and time: 64 concurrent streaming requests complete with the generator's greedy
/// outputs; in a second wave of 64 long requests, half disconnect mid-stream and their KV memory is freed (measured from
/// the engine's accounting, and the pool is released once idle); process memory stays bounded across the waves.
/// </summary>
public sealed class ServingLoadTests : IAsyncLifetime
{
    const int Clients = 64;
    readonly ServingFixture fixture = new(context: 2048); // room for streams that cannot end before their cancellation lands
    TernServer server = null!;
    // No draining of an abandoned response: a cancelled stream closes its connection, as a client that goes away does (the
    // default handler would read up to 1 MB or 2 s of the rest to reuse the connection, so the server would see no disconnect).
    readonly HttpClient http = new(new SocketsHttpHandler { MaxResponseDrainSize = 0, ResponseDrainTimeout = TimeSpan.Zero }) { Timeout = TimeSpan.FromSeconds(60) };

    ServingEngine engine => fixture.Engine;

    public async ValueTask InitializeAsync() =>
        server = await fixture.ServeAsync(new ServingOptions { MaxBatchSize = Clients, MeasureKvCache = true, MaxNewTokens = 2000 }, new ServerOptions { Port = 0 }, Ct);

    public async ValueTask DisposeAsync()
    {
        http.Dispose();
        await fixture.DisposeAsync();
    }

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    string[] Expected(int maxNew) => ServingFixture.Prompts.Select(p => new Generator(fixture.Model, fixture.Tokenizer)
        .Generate(new[] { p }, new GenerationOptions { MaxNewTokens = maxNew }, Ct).Sequences[0].Text!).ToArray();

    /// <summary>Streams one completion; <paramref name="onChunk"/> sees the number of text chunks so far.</summary>
    async Task<string> Stream(string prompt, int maxTokens, CancellationToken cancellation, Action<int>? onChunk = null)
    {
        string body = JsonSerializer.Serialize(new { model = "tern", prompt, max_tokens = maxTokens, temperature = 0, stream = true });
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(server.Address, "/v1/completions")) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellation);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var text = new StringBuilder();
        int chunks = 0;
        await foreach (string data in ServerSentEvents.Read(await response.Content.ReadAsStreamAsync(cancellation), cancellation))
        {
            if (data == "[DONE]") break;
            text.Append(JsonDocument.Parse(data).RootElement.GetProperty("choices")[0].GetProperty("text").GetString());
            onChunk?.Invoke(++chunks);
        }
        return text.ToString();
    }

    [Fact]
    public async Task SixtyFourStreamsCompleteAndHalfCancelledFreeTheirMemory()
    {
        using var bounded = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        bounded.CancelAfter(TimeSpan.FromSeconds(90));
        var prompts = ServingFixture.Prompts;
        var process = Process.GetCurrentProcess();

        // Wave 1: 64 concurrent streams, each the generator's greedy text.
        var expected = Expected(16);
        var watch = Stopwatch.StartNew();
        var texts = await Task.WhenAll(Enumerable.Range(0, Clients).Select(i => Stream(prompts[i % prompts.Length], 16, bounded.Token)));
        watch.Stop();
        for (int i = 0; i < Clients; i++) Assert.Equal(expected[i % prompts.Length], texts[i]);
        Assert.True(engine.Stats.GeneratedTokens >= Clients * 8, $"{engine.Stats.GeneratedTokens} tokens for {Clients} requests");
        GC.Collect();
        process.Refresh();
        long memoryAfterWave1 = process.WorkingSet64;

        // Wave 2: 64 long streams; the even ones (asking for 2,000 tokens, so that they cannot finish before the server sees
        // the disconnect, however loaded the machine: 480 could, at a load of 13 on 2 cores) disconnect after 3 chunks. The odd
        // ones ask for 300, so that none finishes before the last stream's third chunk (120 could once the CPU's decode
        // attention got faster: 32 of 64 were done when the snapshot below was taken).
        const int survivorTokens = 300;
        var longExpected = Expected(survivorTokens);
        var started = new CountdownEvent(Clients);
        var cancels = Enumerable.Range(0, Clients).Select(_ => CancellationTokenSource.CreateLinkedTokenSource(bounded.Token)).ToArray();
        var streams = Enumerable.Range(0, Clients).Select(i => Task.Run(() => Stream(prompts[i % prompts.Length], i % 2 == 0 ? 2000 : survivorTokens, cancels[i].Token,
            n => { if (n == 3) started.Signal(); }), bounded.Token)).ToArray();
        Assert.True(started.Wait(TimeSpan.FromSeconds(60), bounded.Token), "every stream should get three chunks");
        var before = engine.Stats;
        for (int i = 0; i < Clients; i += 2) cancels[i].Cancel();
        await ServingEngineTests.WaitFor(() => engine.Stats.CancelledRequests == Clients / 2, 30, () => engine.Stats);
        var after = engine.Stats;
        for (int i = 0; i < Clients; i++)
        {
            if (i % 2 == 0) await Assert.ThrowsAnyAsync<OperationCanceledException>(() => streams[i]);
            else Assert.Equal(longExpected[i % prompts.Length], await streams[i]);
        }
        await ServingEngineTests.WaitFor(() => engine.Stats.Running == 0 && engine.Stats.AllocatedKvBytes == 0);

        // Memory: the survivors' entries grew by one token per step; what the cancelled held is gone.
        var info = fixture.Model.Info;
        long bytesPerToken = 2L * info.Layers * info.KvHeads * info.HeadDim * sizeof(float);
        long survivorsThen = after.LiveKvBytes - (after.Steps - before.Steps) * after.Running * bytesPerToken;
        double freed = 1 - (double)survivorsThen / before.LiveKvBytes;
        Assert.Equal(Clients, before.Running);
        Assert.Equal((before.LiveKvBytes, after.LiveKvBytes), (before.MeasuredKvBytes, after.MeasuredKvBytes)); // counted in the cache itself
        Assert.InRange(freed, 0.40, 0.60);
        GC.Collect();
        process.Refresh();
        long growth = process.WorkingSet64 - memoryAfterWave1;
        TestContext.Current.SendDiagnosticMessage(
            $"wave 1: {Clients} streams x 16 tokens in {watch.Elapsed.TotalSeconds:F2} s; wave 2: live KV {before.LiveKvBytes} B for {before.Running} -> " +
            $"{after.LiveKvBytes} B for {after.Running} (measured in the cache: {before.MeasuredKvBytes} -> {after.MeasuredKvBytes}; {freed:P0} freed at the cancellation), pool {before.AllocatedKvBytes} B -> 0 when idle; " +
            $"working set +{growth / 1e6:F1} MB after wave 2");
        Assert.True(growth < 256L << 20, $"working set grew by {growth / 1e6:F0} MB over a wave of {Clients} streams");
    }
}
