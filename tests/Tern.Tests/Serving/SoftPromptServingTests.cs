using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using Tern.Caching;
using Tern.Generation;
using Tern.Models;
using Tern.Offloading;
using Tern.Prompting;
using Tern.Runtime;
using Tern.Server;
using Tern.Serving;
using TorchSharp;
using Generator = Tern.Generation.Generator;

namespace Tern.Tests.Serving;

/// <summary>Soft prompts served (<see cref="ServingOptions.SoftPrompts"/>): each row starts from the prompt's entries, prefilled
/// once, and gives the tokens <see cref="Generator"/> gives over the <see cref="PromptedModel"/> (what <c>tern generate
/// --soft-prompt</c> runs), eagerly and with static shapes, under every KV policy, with rows of several prompts in one pool.</summary>
public sealed class SoftPromptServingTests : IDisposable
{
    readonly ServingFixture fixture = new();
    readonly SoftPrompt four, seven;

    public SoftPromptServingTests()
    {
        var generator = new torch.Generator(5);
        using var a = torch.randn(new long[] { 4, fixture.Model.TokenEmbeddingWidth }, generator: generator);
        using var b = torch.randn(new long[] { 7, fixture.Model.TokenEmbeddingWidth }, generator: generator);
        four = SoftPrompt.FromTensor(a);
        seven = SoftPrompt.FromTensor(b);
    }

    public void Dispose()
    {
        four.Dispose();
        seven.Dispose();
        fixture.Dispose();
    }

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static GenerationOptions Greedy(int maxNew, KvCacheConfig? cache = null) => new() { MaxNewTokens = maxNew, StopTokenIds = Array.Empty<int>(), Cache = cache };

    static KvCacheConfig Policy(string name, string? budget = null, int? sinks = null, int evictEvery = 1, int bits = 16) =>
        KvCachePolicies.Create(new KvPolicyOptions { Policy = name, Budget = budget is null ? null : KvBudget.Parse(budget), Sinks = sinks, EvictEvery = evictEvery, Bits = bits });

    /// <summary>What <c>tern generate --soft-prompt</c> gives for <paramref name="text"/> alone.</summary>
    int[] Reference(SoftPrompt? prompt, string text, GenerationOptions options)
    {
        if (prompt is null) return new Generator(fixture.Model, fixture.Tokenizer).Generate(new[] { text }, options, Ct).Sequences[0].Tokens.ToArray();
        using var prompted = PromptedModel.Create(fixture.Model, prompt);
        return new Generator(prompted, fixture.Tokenizer).Generate(new[] { text }, options, Ct).Sequences[0].Tokens.ToArray();
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public async Task GreedyTokensEqualThePromptedGeneratorAloneTogetherJoiningAndChunked(bool staticShapes, bool overlap)
    {
        var expected = ServingFixture.Prompts.Select(p => Reference(seven, p, Greedy(24))).ToArray();
        Assert.NotEqual(ServingFixture.Prompts.Select(p => Reference(null, p, Greedy(24))), expected); // the prompt matters
        var prompts = new Dictionary<string, SoftPrompt> { [ServingOptions.DefaultSoftPrompt] = seven };
        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer,
            new ServingOptions { MaxBatchSize = 8, ForceStaticShapes = staticShapes, OverlapSteps = overlap, SoftPrompts = prompts });

        Assert.Equal(expected[0], (await engine.Submit(ServingFixture.Prompts[0], Greedy(24), Ct).Completion).Tokens);
        var together = ServingFixture.Prompts.Select(p => engine.Submit(p, Greedy(24), Ct)).ToArray();
        for (int i = 0; i < together.Length; i++) Assert.Equal(expected[i], (await together[i].Completion).Tokens);

        var staggered = new List<(int Prompt, ServingRequest Request, int MaxNew)>();
        for (int i = 0; i < ServingFixture.Prompts.Length; i++)
        {
            int maxNew = 6 + 2 * i;
            var request = engine.Submit(ServingFixture.Prompts[i], Greedy(maxNew), Ct);
            staggered.Add((i, request, maxNew));
            await request.Tokens.WaitToReadAsync(Ct);
        }
        foreach (var (prompt, request, maxNew) in staggered) Assert.Equal(expected[prompt][..maxNew], (await request.Completion).Tokens);

        // Prompts longer than the prefill budget are prefilled in chunks, after the soft prompt's entries.
        using var trickle = ServingEngine.Start(fixture.Model, fixture.Tokenizer,
            new ServingOptions { MaxBatchSize = 8, MaxPrefillTokensPerStep = 3, ForceStaticShapes = staticShapes, OverlapSteps = overlap, SoftPrompts = prompts });
        var spread = ServingFixture.Prompts.Select(p => trickle.Submit(p, Greedy(24), Ct)).ToArray();
        for (int i = 0; i < spread.Length; i++) Assert.Equal(expected[i], (await spread[i].Completion).Tokens);
    }

    /// <summary>Requests of two named prompts and of none share one pool (one KV configuration), each row after its own
    /// prompt's entries.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task RowsOfSeveralNamedPromptsShareAPool(bool staticShapes)
    {
        var named = new (string? Name, SoftPrompt? Prompt)[] { ("four", four), ("seven", seven), (null, null) };
        var cases = ServingFixture.Prompts.Select((p, i) => (Text: p, named[i % 3].Name, named[i % 3].Prompt)).ToArray();
        var expected = cases.Select(c => Reference(c.Prompt, c.Text, Greedy(20))).ToArray();
        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions
        {
            MaxBatchSize = 8, ForceStaticShapes = staticShapes, SoftPrompts = new Dictionary<string, SoftPrompt> { ["four"] = four, ["seven"] = seven },
        });
        Assert.Equal(new Dictionary<string, int> { ["four"] = 4, ["seven"] = 7 }, engine.SoftPrompts);
        var requests = cases.Select(c => engine.Submit(fixture.Tokenizer.Encode(c.Text), Greedy(20), c.Name, Ct)).ToArray();
        int pools = 0;
        while (!requests.All(r => r.Completion.IsCompleted))
        {
            pools = Math.Max(pools, engine.Stats.Pools);
            await Task.Delay(1, Ct);
        }
        for (int i = 0; i < cases.Length; i++) Assert.Equal(expected[i], (await requests[i].Completion).Tokens);
        Assert.Equal(1, pools);

        var unknown = Assert.Throws<ServingException>(() => engine.Submit(new[] { 10, 11 }, Greedy(4), "nine", Ct));
        Assert.Equal("soft_prompt", unknown.Field);
        Assert.Contains("'four', 'seven'", unknown.Message);
    }

    /// <summary>Pools of every policy, with and without static shapes, side by side or stepped together: the prompt's entries
    /// under each policy are those <see cref="PromptedModel"/> gives its runners, so the tokens equal its generator's.</summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public async Task PoolsOfEveryPolicyGiveThePromptedGeneratorsTokens(bool staticShapes, bool together)
    {
        var cases = new[]
        {
            (0, Greedy(30)), (1, Greedy(24, Policy("sink", "10", 2))), (2, Greedy(30, Policy("sink", "10", 2, evictEvery: 4))),
            (3, Greedy(30, Policy("h2o", "12", evictEvery: 3))), (4, Greedy(30, Policy("h2o", "0.4"))), (5, Greedy(26, Policy("window", "8"))),
            (6, Greedy(20, Policy("full", bits: 8))),
        };
        var expected = cases.Select(c => Reference(seven, ServingFixture.Prompts[c.Item1], c.Item2)).ToArray();
        using var engine = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions
        {
            MaxBatchSize = 8, ForceStaticShapes = staticShapes, StepPoolsTogether = together,
            SoftPrompts = new Dictionary<string, SoftPrompt> { [ServingOptions.DefaultSoftPrompt] = seven },
        });
        var requests = cases.Select(c => engine.Submit(ServingFixture.Prompts[c.Item1], c.Item2, Ct)).ToArray();
        for (int i = 0; i < cases.Length; i++) Assert.Equal(expected[i], (await requests[i].Completion).Tokens);
    }

    /// <summary>The prompt's entries count in the row: the context left to the prompt and to max_tokens is n shorter, and
    /// the reserved KV tokens include them.</summary>
    [Fact]
    public async Task ThePromptsEntriesCountAgainstTheContextAndTheBudget()
    {
        using var small = new ServingFixture(context: 40);
        using var engine = ServingEngine.Start(small.Model, small.Tokenizer,
            new ServingOptions { MaxBatchSize = 2, KvBudgetTokens = 40, SoftPrompts = new Dictionary<string, SoftPrompt> { ["p"] = seven } });
        var ids = Enumerable.Range(10, 33).ToArray();
        var tooLong = Assert.Throws<ServingException>(() => engine.Submit(ids, Greedy(4), "p", Ct)); // 7 + 33 leaves no position to predict from
        Assert.Equal("prompt", tooLong.Field);
        Assert.Contains("the soft prompt takes 7", tooLong.Message);
        Assert.Equal(4, (await engine.Submit(ids, Greedy(4), Ct).Completion).Tokens.Count); // without it, 33 tokens fit
        var request = engine.Submit(ids[..20], Greedy(100), "p", Ct);
        Assert.Equal(40 - 7 - 20, request.MaxNewTokens);
        Assert.Equal(40 - 7 - 20, (await request.Completion).Tokens.Count);
        var plain = engine.Submit(ids[..20], Greedy(100), Ct);
        Assert.Equal(40 - 20, plain.MaxNewTokens);
        await plain.Completion;
    }

    /// <summary>Over HTTP a request picks a prompt by the body field <c>soft_prompt</c>; without it (or null) the default prompt
    /// runs, with <c>"none"</c> no prompt (the plain model's text); an unknown name is a 400 naming the field. Usage counts the
    /// text's tokens as <c>prompt_tokens</c> and the prompt's vectors as <c>prompt_tokens_details.soft_prompt_tokens</c>.</summary>
    [Fact]
    public async Task ARequestPicksItsPromptByTheSoftPromptField()
    {
        var server = await fixture.ServeAsync(new ServingOptions
        {
            SoftPrompts = new Dictionary<string, SoftPrompt> { [ServingOptions.DefaultSoftPrompt] = seven, ["four"] = four },
        }, new ServerOptions { Port = 0, ModelId = "tiny" }, Ct);
        try
        {
            using var http = new HttpClient();
            async Task<(HttpStatusCode, JsonElement)> Post(string json)
            {
                using var response = await http.PostAsync(new Uri(server.Address, "/v1/completions"), new StringContent(json, Encoding.UTF8, "application/json"), Ct);
                return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone());
            }
            string text = ServingFixture.Prompts[1];
            int textTokens = fixture.Tokenizer.Encode(text).Count;
            foreach (var (field, prompt) in new[] { ("", seven), (",\"soft_prompt\":null", seven), (",\"soft_prompt\":\"four\"", four), (",\"soft_prompt\":\"none\"", null) })
            {
                var (code, body) = await Post($$"""{"model":"tiny","prompt":"{{text}}","max_tokens":12,"temperature":0{{field}}}""");
                Assert.Equal(HttpStatusCode.OK, code);
                Assert.Equal(fixture.Tokenizer.Decode(Reference(prompt, text, Greedy(12))), body.GetProperty("choices")[0].GetProperty("text").GetString());
                // prompt_tokens counts the text (what OpenAI clients count and bill); the prompt's vectors are told apart.
                var usage = body.GetProperty("usage");
                Assert.Equal(textTokens, usage.GetProperty("prompt_tokens").GetInt32());
                Assert.Equal(textTokens + 12, usage.GetProperty("total_tokens").GetInt32());
                if (prompt is null) Assert.False(usage.TryGetProperty("prompt_tokens_details", out _));
                else Assert.Equal(prompt.Length, usage.GetProperty("prompt_tokens_details").GetProperty("soft_prompt_tokens").GetInt32());
            }
            var (refused, error) = await Post("""{"model":"tiny","prompt":"hi","soft_prompt":"nine"}""");
            Assert.Equal(HttpStatusCode.BadRequest, refused);
            Assert.Equal("soft_prompt", error.GetProperty("error").GetProperty("param").GetString());
        }
        finally
        {
            await server.DisposeAsync();
            fixture.Engine.Dispose();
        }
    }

    /// <summary><see cref="TernChatClient"/> picks a named prompt through <see cref="ChatOptions.AdditionalProperties"/>, or none
    /// (opting out of the default prompt); its usage counts the text as input and the prompt's vectors apart.</summary>
    [Fact]
    public async Task TheChatClientPicksANamedPrompt()
    {
        using var client = new TernChatClient(fixture.Model, fixture.Tokenizer,
            new ServingOptions { SoftPrompts = new Dictionary<string, SoftPrompt> { ["four"] = four, [ServingOptions.DefaultSoftPrompt] = seven } });
        var ids = client.Engine.EncodeChat(new[] { Tern.Tokenization.ChatMessage.User("Tell me a story") });
        using var prompted = PromptedModel.Create(fixture.Model, four);
        var expected = new Generator(prompted, fixture.Tokenizer).GenerateTokens(new[] { ids }, new GenerationOptions { MaxNewTokens = 16 }, Ct).Sequences[0];
        var options = new ChatOptions
        {
            Temperature = 0, MaxOutputTokens = 16, AdditionalProperties = new() { [TernChatClient.SoftPromptProperty] = "four" },
        };
        var response = await ((IChatClient)client).GetResponseAsync("Tell me a story", options, Ct);
        Assert.Equal(expected.Text, response.Text);
        Assert.Equal(ids.Count, response.Usage!.InputTokenCount);
        Assert.Equal(4, response.Usage.AdditionalCounts!["soft_prompt_tokens"]);

        var plain = new Generator(fixture.Model, fixture.Tokenizer).GenerateTokens(new[] { ids }, new GenerationOptions { MaxNewTokens = 16 }, Ct).Sequences[0];
        options.AdditionalProperties[TernChatClient.SoftPromptProperty] = ServingOptions.NoSoftPrompt;
        var none = await ((IChatClient)client).GetResponseAsync("Tell me a story", options, Ct);
        Assert.Equal(plain.Text, none.Text);
        Assert.Null(none.Usage!.AdditionalCounts);
    }

    /// <summary>An offloaded model serves soft prompts in FlexGen's blocks: requests of the default prompt, of a named one and
    /// of none (<see cref="ServingOptions.NoSoftPrompt"/>), queued together, form blocks of one prompt each in their order, each
    /// row after its prompt's entries prefilled with the block; every request's greedy tokens equal the in-memory engine's, the
    /// prompted generator's alone and, for the default prompt, those of the offloaded prompted generator (<c>tern generate
    /// --soft-prompt --offload</c>). Requests under a KV policy or a quantized cache (fields kv_policy, kv_bits) run after a prompt
    /// as without one: the prompt's entries are what the policy keeps of it, as in memory.</summary>
    [Fact]
    public async Task AnOffloadedModelServesSoftPromptsBlockByBlockAsInMemory()
    {
        using var offloaded = OffloadedModel.Load(fixture.Folder, new ModelLoadOptions { Device = DeviceKind.Cpu },
            new OffloadOptions { Policy = OffloadPolicy.Parse("w=0/100/0,kv=0/100/0,act=0/100/0,gbs=2,ngb=2") });
        var named = new (string? Name, SoftPrompt? Prompt)[] { (null, seven), (null, seven), ("four", four), (ServingOptions.NoSoftPrompt, null) };
        var cases = ServingFixture.Prompts.Select((p, i) => (Text: p, named[i % 4].Name, named[i % 4].Prompt, Options: Greedy(10 + i))).ToList();
        var h2o = Policy("h2o", "8");
        cases.Add((ServingFixture.Prompts[2], ServingOptions.NoSoftPrompt, null, Greedy(12, h2o))); // a policy without a prompt runs
        // With a prompt, each of its own block (one cache configuration per block): the window's prompt alone outgrows the budget.
        cases.Add((ServingFixture.Prompts[3], null, seven, Greedy(12, h2o)));
        cases.Add((ServingFixture.Prompts[4], "four", four, Greedy(10, Policy("sink", "6", sinks: 2))));
        cases.Add((ServingFixture.Prompts[5], null, seven, Greedy(10, Policy("window", "5"))));
        cases.Add((ServingFixture.Prompts[6], "four", four, Greedy(8, Policy("full", bits: 8))));
        var expected = cases.Select(c => Reference(c.Prompt, c.Text, c.Options)).ToArray();
        using (var promptedOffloaded = PromptedModel.Create(offloaded, seven))
            Assert.Equal(expected[0], new Generator(promptedOffloaded, fixture.Tokenizer).Generate(new[] { cases[0].Text }, cases[0].Options, Ct).Sequences[0].Tokens);
        var prompts = new Dictionary<string, SoftPrompt> { [ServingOptions.DefaultSoftPrompt] = seven, ["four"] = four };
        using var engine = ServingEngine.Start(offloaded, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 4, SoftPrompts = prompts });
        using var inMemory = ServingEngine.Start(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 4, SoftPrompts = prompts });
        Assert.Equal(new Dictionary<string, int> { [""] = 7, ["four"] = 4 }, engine.SoftPrompts);
        var requests = cases.Select(c => engine.Submit(fixture.Tokenizer.Encode(c.Text), c.Options, c.Name, Ct)).ToArray();
        var references = cases.Select(c => inMemory.Submit(fixture.Tokenizer.Encode(c.Text), c.Options, c.Name, Ct)).ToArray();
        for (int i = 0; i < cases.Count; i++)
        {
            Assert.Equal(expected[i], (await requests[i].Completion).Tokens);
            Assert.Equal(expected[i], (await references[i].Completion).Tokens);
        }
        Assert.NotEqual(expected[0], Reference(null, cases[0].Text, cases[0].Options)); // the prompt matters

        // An echo's scores run after the prompt too (a runner of the prompted model over the prompt alone).
        var scored = Greedy(2) with { PromptLogprobs = 1 };
        var ids = fixture.Tokenizer.Encode(ServingFixture.Prompts[6]);
        var (offloadedScores, inMemoryScores) = (engine.Submit(ids, scored, "four", Ct), inMemory.Submit(ids, scored, "four", Ct));
        await Task.WhenAll(offloadedScores.Completion, inMemoryScores.Completion);
        Assert.Equal(inMemoryScores.PromptLogprobs!.Select(t => t?.TokenId), offloadedScores.PromptLogprobs!.Select(t => t?.TokenId));
        for (int i = 1; i < ids.Count; i++) Assert.Equal(inMemoryScores.PromptLogprobs[i]!.Logprob, offloadedScores.PromptLogprobs[i]!.Logprob, 1e-5f);
    }

    /// <summary>"none" is the name a request opts out with: no prompt may take it.</summary>
    [Fact]
    public void NoPromptMayBeNamedNone()
    {
        var e = Assert.Throws<OptionException>(() => ServingEngine.Start(fixture.Model, fixture.Tokenizer,
            new ServingOptions { SoftPrompts = new Dictionary<string, SoftPrompt> { [ServingOptions.NoSoftPrompt] = four } }));
        Assert.Equal(TernOption.SoftPromptFile, e.Option);
    }
}
