using Tern.Generation;
using Tern.Caching;
using Tern.Runtime;
using Tern.Serving;

namespace Tern.Tests.Serving;

/// <summary>The continuous-batching engine: the same tokens as <see cref="Generator"/> alone, together and when requests
/// join mid-run; per-request sampling and KV policies; cancellation freeing rows; queue limits.</summary>
public sealed class ServingEngineTests : IDisposable
{
    readonly ServingFixture fixture = new();

    public void Dispose() => fixture.Dispose();

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static GenerationOptions Greedy(int maxNew) => new() { MaxNewTokens = maxNew, StopTokenIds = Array.Empty<int>() };

    int[] Reference(string prompt, GenerationOptions options) =>
        new Generator(fixture.Model, fixture.Tokenizer).Generate(new[] { prompt }, options, Ct).Sequences[0].Tokens.ToArray();

    /// <param name="staticShapes">Pools step with static shapes over all their rows, free ones masked (what a CUDA graph replays).</param>
    /// <param name="overlap">Each step is queued before the previous step's tokens are streamed (<see cref="ServingOptions.OverlapSteps"/>).</param>
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public async Task GreedyTokensEqualTheGeneratorAloneTogetherAndJoiningMidRun(bool staticShapes, bool overlap)
    {
        var options = Greedy(24);
        var expected = ServingFixture.Prompts.Select(p => Reference(p, Greedy(30))).ToArray();
        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 8, ForceStaticShapes = staticShapes, OverlapSteps = overlap });

        // Alone, one after the other.
        for (int i = 0; i < 2; i++)
            Assert.Equal(expected[i][..24], (await engine.Submit(ServingFixture.Prompts[i], options, Ct).Completion).Tokens);

        // All at once.
        var together = ServingFixture.Prompts.Select(p => engine.Submit(p, options, Ct)).ToArray();
        for (int i = 0; i < together.Length; i++) Assert.Equal(expected[i][..24], (await together[i].Completion).Tokens);

        // Staggered: each request joins while the earlier ones are mid-way (different max tokens, so rows leave at different steps).
        var staggered = new List<(int Prompt, ServingRequest Request, int MaxNew)>();
        for (int i = 0; i < ServingFixture.Prompts.Length; i++)
        {
            int maxNew = 6 + 3 * i; // up to 27
            var request = engine.Submit(ServingFixture.Prompts[i], Greedy(maxNew), Ct);
            staggered.Add((i, request, maxNew));
            await request.Tokens.WaitToReadAsync(Ct); // at least its first token is out: the next one joins a running batch
        }
        foreach (var (prompt, request, maxNew) in staggered)
            Assert.Equal(expected[prompt][..maxNew], (await request.Completion).Tokens);
        // Stats are published at step boundaries: the last completion can be seen before the boundary that follows it.
        await WaitFor(() => engine.Stats.Running == 0);

        // A small prefill budget per step: the burst joins over several steps, one or two prompts at a time.
        using var trickle = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 8, MaxPrefillTokensPerStep = 6, ForceStaticShapes = staticShapes, OverlapSteps = overlap });
        var spread = ServingFixture.Prompts.Select(p => trickle.Submit(p, options, Ct)).ToArray();
        for (int i = 0; i < spread.Length; i++) Assert.Equal(expected[i][..24], (await spread[i].Completion).Tokens);
    }

    /// <summary>With static shapes each row of a full-cache pool writes at its own next slot: requests that keep joining a
    /// running pool (each the moment the one before it streams its first token, for four rounds) never hold more KV slots than
    /// the same requests all at once, where one shared write slot let the pool's length grow with every late joiner.</summary>
    [Fact]
    public async Task RowsJoiningARunningPoolDoNotStretchItsSlots()
    {
        var options = Greedy(20);
        var expected = ServingFixture.Prompts.Select(p => Reference(p, options)).ToArray();
        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 8, ForceStaticShapes = true });
        long peak = 0;
        using var watching = new CancellationTokenSource();
        var watcher = Task.Run(async () =>
        {
            while (!watching.IsCancellationRequested)
            {
                peak = Math.Max(peak, engine.Stats.AllocatedKvBytes);
                await Task.Delay(1);
            }
        }, Ct);
        var burst = ServingFixture.Prompts.Select(p => engine.Submit(p, options, Ct)).ToArray();
        for (int i = 0; i < burst.Length; i++) Assert.Equal(expected[i], (await burst[i].Completion).Tokens);
        long burstPeak = peak;

        var rolling = new List<(int Prompt, ServingRequest Request)>();
        for (int i = 0; i < 4 * ServingFixture.Prompts.Length; i++)
        {
            int prompt = i % ServingFixture.Prompts.Length;
            var request = engine.Submit(ServingFixture.Prompts[prompt], options, Ct);
            rolling.Add((prompt, request));
            await request.Tokens.WaitToReadAsync(Ct);
        }
        foreach (var (prompt, request) in rolling) Assert.Equal(expected[prompt], (await request.Completion).Tokens);
        watching.Cancel();
        await watcher;
        Assert.True(burstPeak > 0 && peak <= burstPeak, $"rolling joins allocated {peak} bytes of KV cache at most, all at once {burstPeak}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ALongPromptIsPrefilledInChunksWhileOthersKeepDecoding(bool overlap)
    {
        string longPrompt = string.Join(" ", ServingFixture.Prompts); // far more than 4 tokens
        int promptTokens = fixture.Tokenizer.Encode(longPrompt).Count;
        // The same chunks through the generator (a prompt alone: chunks of 4 from its first token) and without chunks.
        var chunked = Reference(longPrompt, Greedy(20) with { PrefillChunk = 4 });
        Assert.Equal(Reference(longPrompt, Greedy(20)), chunked);
        var shortExpected = Reference(ServingFixture.Prompts[0], Greedy(60));

        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 4, MaxPrefillTokensPerStep = 4, OverlapSteps = overlap });
        var running = engine.Submit(ServingFixture.Prompts[0], Greedy(60), Ct);
        await running.Tokens.WaitToReadAsync(Ct);
        long stepsBefore = engine.Stats.Steps;
        var joining = engine.Submit(longPrompt, Greedy(20), Ct);
        await joining.Tokens.WaitToReadAsync(Ct);
        // Its first token came after one prefill chunk per step, each step also decoding the running sequence.
        Assert.True(engine.Stats.Steps - stepsBefore >= (promptTokens + 3) / 4 - 1, $"{engine.Stats.Steps - stepsBefore} steps for {promptTokens} prompt tokens");
        Assert.Equal(chunked, (await joining.Completion).Tokens);
        Assert.Equal(shortExpected, (await running.Completion).Tokens);

        // Cancelled while prefilling: dropped at the next boundary.
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var dropped = engine.Submit(longPrompt, Greedy(20), cancel.Token);
        cancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => dropped.Completion);
        await WaitFor(() => engine.Stats.Running == 0 && engine.Stats.AllocatedKvBytes == 0);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task SeededSamplingAndPoliciesPerRequestMatchTheGenerator(bool overlap)
    {
        var sampled = new GenerationOptions { MaxNewTokens = 20, Temperature = 0.9, TopP = 0.9, Seed = 7, StopTokenIds = Array.Empty<int>() };
        var sink = Greedy(40) with { Cache = KvCachePolicies.Create(new KvPolicyOptions { Policy = "sink", Budget = KvBudget.Parse("12"), Sinks = 2 }) };
        var quantized = Greedy(20) with { Cache = KvCachePolicies.Create(new KvPolicyOptions { Policy = "full", Bits = 8 }) };
        var cases = new[] { (ServingFixture.Prompts[1], sampled), (ServingFixture.Prompts[3], sink), (ServingFixture.Prompts[0], quantized), (ServingFixture.Prompts[6], Greedy(20)) };
        var expected = cases.Select(c => Reference(c.Item1, c.Item2)).ToArray();
        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 8, OverlapSteps = overlap });
        var requests = cases.Select(c => engine.Submit(c.Item1, c.Item2, Ct)).ToArray();
        for (int i = 0; i < cases.Length; i++) Assert.Equal(expected[i], (await requests[i].Completion).Tokens);
        var reseeded = await engine.Submit(cases[0].Item1, sampled with { Seed = 8 }, Ct).Completion;
        Assert.NotEqual(expected[0], reseeded.Tokens);
    }

    /// <summary>Every KV policy is served in a shared pool: requests of the same policy share one batch (their budgets resolved
    /// for their own lengths), different policies run in one forward pass (<paramref name="together"/>) or one pass per pool,
    /// sequences join mid-run, and each request gets the tokens the <see cref="Generator"/> gives it alone. Window
    /// re-computation is refused with the field.</summary>
    [Theory]
    [InlineData(false, false, true)]
    [InlineData(false, true, true)]
    [InlineData(false, false, false)]
    [InlineData(true, false, false)]
    [InlineData(true, true, false)]
    [InlineData(true, false, true)]
    [InlineData(true, true, true)]
    public async Task EveryPolicyIsPooledAndEachRequestEqualsTheGeneratorAlone(bool staticShapes, bool overlap, bool together)
    {
        KvCacheConfig Policy(string name, string? budget, int bits = 16, int? sinks = null, int evictEvery = 1) => KvCachePolicies.Create(new KvPolicyOptions
        {
            Policy = name, Budget = budget is null ? null : KvBudget.Parse(budget), Bits = bits, Sinks = sinks, EvictEvery = evictEvery,
        });
        var h2o = Policy("h2o", "0.5");
        var cases = new (int Prompt, GenerationOptions Options)[]
        {
            (0, Greedy(40)),
            (1, Greedy(40) with { Cache = h2o }),
            (3, Greedy(36) with { Cache = h2o }),                        // same policy, other length: another budget
            (6, Greedy(40) with { Cache = Policy("h2o", "12") }),
            (5, Greedy(40) with { Cache = Policy("h2o", "12") }),        // shares the pool above
            (2, Greedy(40) with { Cache = Policy("sink", "10", sinks: 2) }),
            (4, Greedy(40) with { Cache = Policy("sink", "10", sinks: 2) }),
            (7, Greedy(40) with { Cache = Policy("window", "8", evictEvery: 4) }),
            (3, Greedy(40) with { Cache = Policy("full", null, bits: 8) }),
        };
        var expected = cases.Select(c => Reference(ServingFixture.Prompts[c.Prompt], c.Options)).ToArray();
        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 16, ForceStaticShapes = staticShapes, OverlapSteps = overlap, StepPoolsTogether = together });

        var all = cases.Select(c => engine.Submit(ServingFixture.Prompts[c.Prompt], c.Options, Ct)).ToArray();
        ServingStats? seen = null; // one snapshot: the stats of one step boundary
        await WaitFor(() => (seen = engine.Stats).Running == cases.Length);
        Assert.Equal(7, seen!.Pools); // nine requests, seven distinct policies once resolved
        for (int i = 0; i < cases.Length; i++) Assert.Equal(expected[i], (await all[i].Completion).Tokens);
        // One forward pass a step for every pool, or one a pool: 40 tokens need 39 decode steps of each.
        await WaitFor(() => engine.Stats.Running == 0);
        long steps = engine.Stats.Steps;
        Assert.True(together ? steps < 2 * 40 : steps > 5 * 39, $"{steps} steps");

        // Staggered: each joins its policy's pool while the earlier requests are mid-way.
        var staggered = new List<ServingRequest>();
        foreach (var c in cases)
        {
            var request = engine.Submit(ServingFixture.Prompts[c.Prompt], c.Options, Ct);
            staggered.Add(request);
            await request.Tokens.WaitToReadAsync(Ct);
        }
        for (int i = 0; i < cases.Length; i++) Assert.Equal(expected[i], (await staggered[i].Completion).Tokens);
        await WaitFor(() => engine.Stats.Running == 0 && engine.Stats.AllocatedKvBytes == 0);

        var recompute = Assert.Throws<ServingException>(() => engine.Submit(ServingFixture.Prompts[0],
            Greedy(30).WithKvPolicy(new KvPolicyOptions { Policy = "window-recompute", Budget = KvBudget.Parse("8") }), Ct));
        Assert.Equal("kv_policy", recompute.Field);
        Assert.Equal(Tern.Runtime.TernOption.KvPolicy, Assert.IsType<Tern.Runtime.OptionException>(recompute.InnerException).Option);
    }

    /// <summary>An offloaded model serves in FlexGen's throughput mode: requests admitted together form a block that runs until
    /// its last request ends, the next block forms from those that waited; greedy, seeded, stopped and h2o requests (its cache
    /// in host memory) each get what the <see cref="Generator"/> gives them alone, and the engine's stats follow.</summary>
    [Fact]
    public async Task AnOffloadedModelServesBlockAfterBlockAndEachRequestEqualsTheGeneratorAlone()
    {
        using var offloaded = Tern.Offloading.OffloadedModel.Load(fixture.Folder, new Tern.Models.ModelLoadOptions { Device = DeviceKind.Cpu },
            new Tern.Offloading.OffloadOptions { Policy = Tern.Offloading.OffloadPolicy.Parse("w=0/100/0,kv=0/100/0,act=0/100/0,gbs=2,ngb=2") });
        var h2o = KvCachePolicies.Create(new KvPolicyOptions { Policy = "h2o", Budget = KvBudget.Parse("8") });
        var sampled = new GenerationOptions { MaxNewTokens = 20, Temperature = 0.9, TopP = 0.9, Seed = 7, StopTokenIds = Array.Empty<int>() };
        var cases = new (int Prompt, GenerationOptions Options)[]
        {
            (0, Greedy(24)), (1, Greedy(12)), (3, sampled), (6, Greedy(30)),     // the first block
            (2, Greedy(18)), (5, Greedy(16) with { Cache = h2o }),        // queued behind it; another policy: a block of its own
            (4, Greedy(16) with { Cache = h2o }),
        };
        var expected = cases.Select(c => Reference(ServingFixture.Prompts[c.Prompt], c.Options)).ToArray();
        using var engine = ServingEngine.Start(offloaded, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 4 });
        var requests = cases.Select(c => engine.Submit(ServingFixture.Prompts[c.Prompt], c.Options, Ct)).ToArray();
        for (int i = 0; i < cases.Length; i++) Assert.Equal(expected[i], (await requests[i].Completion).Tokens);
        await WaitFor(() => engine.Stats.Running == 0 && engine.Stats.Pools == 0);
        Assert.Equal(cases.Sum(c => c.Options.MaxNewTokens), engine.Stats.GeneratedTokens);
    }

    /// <summary>A block prefills all its requests at once: the per-step prefill budget of continuous batching does not split it.</summary>
    [Fact]
    public async Task ABlockIsNotSplitByThePrefillBudget()
    {
        using var offloaded = Tern.Offloading.OffloadedModel.Load(fixture.Folder, new Tern.Models.ModelLoadOptions { Device = DeviceKind.Cpu },
            new Tern.Offloading.OffloadOptions { Policy = Tern.Offloading.OffloadPolicy.Parse("w=0/100/0,kv=0/100/0,act=0/100/0,gbs=2,ngb=2") });
        using var engine = ServingEngine.Start(offloaded, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 4, MaxPrefillTokensPerStep = 2 });
        // A first block runs while the four queue up behind it, so they are all waiting when the next block forms.
        var first = engine.Submit(ServingFixture.Prompts[5], Greedy(120), Ct);
        await first.Tokens.WaitToReadAsync(Ct);
        var requests = ServingFixture.Prompts.Take(4).Select(p => engine.Submit(p, Greedy(8), Ct)).ToArray();
        foreach (var r in requests.Append(first)) await r.Completion;
        await WaitFor(() => engine.Stats.Running == 0); // the boundary after the last step publishes its count
        Assert.Equal(119 + 7, engine.Stats.Steps); // then one block of four (7 decode steps), not four blocks (28)
    }

    /// <summary>In a block, a row that finished steps as padding: with learned positions (OPT, 64 of them) a request capped by
    /// the context ends while a short one runs on, and neither passes the context.</summary>
    [Fact]
    public async Task AFinishedRowOfABlockNeverRunsPastTheContext()
    {
        var dir = Fixtures.ModelDir("opt-prenorm");
        using var plain = Tern.Models.CausalLanguageModel.Load(dir, new Tern.Models.ModelLoadOptions { Device = DeviceKind.Cpu });
        using var offloaded = Tern.Offloading.OffloadedModel.Load(dir, new Tern.Models.ModelLoadOptions { Device = DeviceKind.Cpu },
            new Tern.Offloading.OffloadOptions { Policy = Tern.Offloading.OffloadPolicy.Parse("w=0/100/0,kv=0/100/0,act=0/100/0,gbs=2,ngb=1") });
        var rng = new Random(3);
        var nearContext = Enumerable.Range(0, 58).Select(_ => rng.Next(3, plain.Info.VocabSize)).ToArray(); // 6 positions left
        var shortPrompt = new[] { 5, 9, 17 };
        var expected = new[] { nearContext, shortPrompt }.Select(p => new Generator(plain).GenerateTokens(new[] { (IReadOnlyList<int>)p }, Greedy(40), Ct)
            .Sequences[0].Tokens).ToArray();
        Assert.Equal(6, expected[0].Count);
        using var engine = ServingEngine.Start(offloaded, null, new ServingOptions { MaxBatchSize = 2 });
        var requests = new[] { engine.Submit(nearContext, Greedy(40), Ct), engine.Submit(shortPrompt, Greedy(40), Ct) };
        for (int i = 0; i < 2; i++) Assert.Equal(expected[i], (await requests[i].Completion).Tokens);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task StreamedTextStopStringsAndFinishReasonsFollowTheGenerator(bool overlap)
    {
        var generator = new Generator(fixture.Model, fixture.Tokenizer);
        var plain = generator.Generate(new[] { ServingFixture.Prompts[0] }, Greedy(30), Ct).Sequences[0];
        string stop = plain.Text!.Substring(6, 2);
        var stopped = generator.Generate(new[] { ServingFixture.Prompts[0] }, Greedy(30) with { StopStrings = new[] { stop } }, Ct).Sequences[0];
        Assert.Equal(FinishReason.StopString, stopped.FinishReason);

        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { OverlapSteps = overlap });
        var request = engine.Submit(ServingFixture.Prompts[0], Greedy(30) with { StopStrings = new[] { stop } }, Ct);
        string streamed = "";
        await foreach (var token in request.Tokens.ReadAllAsync(Ct)) streamed += token.Text;
        var output = await request.Completion;
        Assert.Equal(stopped.Text, output.Text);
        Assert.Equal(stopped.Text, streamed);
        Assert.Equal(FinishReason.StopString, output.FinishReason);
        var full = await engine.Submit(ServingFixture.Prompts[0], Greedy(30), Ct).Completion;
        Assert.Equal((plain.Text, FinishReason.Length), (full.Text, full.FinishReason));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task CancellingHalfFreesTheirRowsAndTheOthersFinishCorrectly(bool overlap)
    {
        var options = Greedy(400); // long enough that no request finishes before half are cancelled, on a fast CPU too
        var expected = Reference(ServingFixture.Prompts[4], options);
        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 16, MeasureKvCache = true, OverlapSteps = overlap });
        var sources = Enumerable.Range(0, 16).Select(_ => CancellationTokenSource.CreateLinkedTokenSource(Ct)).ToArray();
        var requests = sources.Select(s => engine.Submit(ServingFixture.Prompts[4], options, s.Token)).ToArray();
        foreach (var r in requests) await r.Tokens.WaitToReadAsync(Ct);
        await WaitFor(() => engine.Stats.Running == 16);
        var before = engine.Stats;
        for (int i = 0; i < 16; i += 2) sources[i].Cancel();
        await WaitFor(() => engine.Stats.Running == 8);
        var after = engine.Stats;
        // Survivors grew by one token per step since; the cancelled rows' entries must be gone. (Requests admitted in
        // different steps differ by a few tokens: allow two tokens per sequence.)
        var info = fixture.Model.Info;
        long bytesPerToken = 2L * info.Layers * info.KvHeads * info.HeadDim * sizeof(float);
        long survivorsThen = after.LiveKvBytes - (after.Steps - before.Steps) * 8 * bytesPerToken;
        Assert.InRange(survivorsThen, before.LiveKvBytes / 2 - 16 * 2 * bytesPerToken, before.LiveKvBytes / 2 + 16 * 2 * bytesPerToken);
        Assert.True(before.LiveKvBytes >= 16 * 6 * bytesPerToken, $"{before.LiveKvBytes} bytes for 16 running sequences");
        // The caches themselves hold exactly the running sequences' entries: the cancelled rows' slots are empty.
        Assert.Equal(before.LiveKvBytes, before.MeasuredKvBytes);
        Assert.Equal(after.LiveKvBytes, after.MeasuredKvBytes);
        for (int i = 0; i < 16; i++)
        {
            if (i % 2 == 0) await Assert.ThrowsAnyAsync<OperationCanceledException>(() => requests[i].Completion);
            else Assert.Equal(expected, (await requests[i].Completion).Tokens);
        }
        await WaitFor(() => engine.Stats.AllocatedKvBytes == 0);
        Assert.Equal((8, 0L), (engine.Stats.CancelledRequests, engine.Stats.MeasuredKvBytes));
    }

    [Fact]
    public async Task LimitsAreRefusedWithTheFieldAndAFullQueueIsOverloaded()
    {
        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer,
            new ServingOptions { MaxBatchSize = 1, MaxQueue = 1, MaxPromptTokens = 8, MaxNewTokens = 400 });
        var e = Assert.Throws<ServingException>(() => engine.Submit("a rather long prompt that has many tokens in it", Greedy(4), Ct));
        Assert.Equal((ServingError.InvalidRequest, "prompt"), (e.Error, e.Field));
        e = Assert.Throws<ServingException>(() => engine.Submit("hi", Greedy(401), Ct));
        Assert.Equal((ServingError.InvalidRequest, "max_tokens"), (e.Error, e.Field));
        e = Assert.Throws<ServingException>(() => engine.Submit("hi", Greedy(4) with { Temperature = -1 }, Ct));
        Assert.Equal(TernOption.Temperature, Assert.IsType<OptionException>(e.InnerException).Option);

        using var hold = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        // Long enough to hold the one batch slot while the test fills the queue: 50 tokens of this tiny model could finish
        // between two polls of a loaded machine (a CI run saw it), and the next request then ran instead of queueing.
        var running = engine.Submit("hi", Greedy(400), hold.Token);
        await WaitFor(() => engine.Stats.Running == 1);
        var queued = engine.Submit("hi", Greedy(4), Ct);
        e = Assert.Throws<ServingException>(() => engine.Submit("hi", Greedy(4), Ct));
        Assert.Equal(ServingError.Overloaded, e.Error);
        hold.Cancel();
        Assert.Equal(4, (await queued.Completion).Tokens.Count);
        Assert.Equal(3, (await engine.Submit("hi", Greedy(3), Ct).Completion).Tokens.Count);
    }

    [Fact]
    public async Task StoppingEndsRunningAndWaitingRequestsAndRefusesNewOnes()
    {
        var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 1 });
        var running = engine.Submit("hi", Greedy(400), Ct);
        await running.Tokens.WaitToReadAsync(Ct);
        var waiting = engine.Submit("hi", Greedy(4), Ct);
        engine.Dispose();
        foreach (var request in new[] { running, waiting })
            Assert.Equal(ServingError.Unavailable, (await Assert.ThrowsAsync<ServingException>(() => request.Completion)).Error);
        Assert.Equal(ServingError.Unavailable, Assert.Throws<ServingException>(() => engine.Submit("hi", Greedy(4), Ct)).Error);
        Assert.Equal(0, engine.Stats.AllocatedKvBytes);
    }

    /// <summary>A graceful stop (issue 18): draining refuses new requests as unavailable and lets the running ones finish
    /// whole; past its deadline it reports what is left, which <see cref="ServingEngine.Dispose"/> ends as unavailable.</summary>
    [Fact]
    public async Task DrainingRefusesNewRequestsAndLetsRunningOnesFinish()
    {
        using (var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 4 }))
        {
            var running = engine.Submit(ServingFixture.Prompts[0], Greedy(30) with { IgnoreEos = true }, Ct);
            await running.Tokens.WaitToReadAsync(Ct);
            var drained = engine.DrainAsync(TimeSpan.FromSeconds(60), Ct);
            var refused = Assert.Throws<ServingException>(() => engine.Submit(ServingFixture.Prompts[1], Greedy(4), Ct));
            Assert.Equal(ServingError.Unavailable, refused.Error);
            Assert.True(await drained);
            Assert.Equal(30, (await running.Completion).Tokens.Count);
            Assert.Equal(0, engine.Outstanding);
        }
        using (var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 4 }))
        {
            var slow = engine.Submit(ServingFixture.Prompts[0], Greedy(400) with { IgnoreEos = true }, Ct);
            await slow.Tokens.WaitToReadAsync(Ct);
            Assert.False(await engine.DrainAsync(TimeSpan.Zero, Ct));
            Assert.Equal(1, engine.Outstanding);
            engine.Dispose();
            var ended = await Assert.ThrowsAsync<ServingException>(() => slow.Completion);
            Assert.Equal(ServingError.Unavailable, ended.Error);
        }
    }

    internal static async Task WaitFor(Func<bool> condition, int seconds = 20, Func<object>? state = null)
    {
        var until = DateTime.UtcNow.AddSeconds(seconds);
        while (!condition())
        {
            if (DateTime.UtcNow > until) throw new TimeoutException($"the engine did not reach the expected state in time. {state?.Invoke()}");
            await Task.Delay(5, Ct);
        }
    }
}
