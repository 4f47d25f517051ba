using Microsoft.Extensions.AI;
using Tern.Generation;
using Tern.Models;
using Tern.Runtime;
using Tern.Serving;
using TernChat = Tern.Tokenization.ChatMessage;

namespace Tern.Tests.Serving;

/// <summary><see cref="TernChatClient"/> as an <see cref="IChatClient"/>: the same replies as the generator, streaming,
/// stop sequences, usage, concurrency and cancellation, in process.</summary>
public sealed class TernChatClientTests : IDisposable
{
    readonly ServingFixture fixture = new();
    readonly TernChatClient client;

    public TernChatClientTests() => client = new TernChatClient(fixture.Model, fixture.Tokenizer, new ServingOptions { MaxBatchSize = 8 }, "tiny");

    public void Dispose()
    {
        client.Dispose();
        fixture.Dispose();
    }

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static ChatOptions Greedy(int max) => new() { Temperature = 0, MaxOutputTokens = max };

    SequenceOutput Reference(string user, int maxNew, IReadOnlyList<string>? stop = null) =>
        new Generator(fixture.Model, fixture.Tokenizer).GenerateTokens(new[] { client.Engine.EncodeChat(new[] { TernChat.User(user) }) },
            new GenerationOptions { MaxNewTokens = maxNew, StopStrings = stop ?? Array.Empty<string>() }, Ct).Sequences[0];

    [Fact]
    public async Task RepliesStreamsAndStopsAsTheGenerator()
    {
        IChatClient chat = client;
        var expected = Reference("Tell me a story", 24);
        var response = await chat.GetResponseAsync("Tell me a story", Greedy(24), Ct);
        Assert.Equal(expected.Text, response.Text);
        Assert.Equal(ChatRole.Assistant, response.Messages[0].Role);
        Assert.Equal(expected.FinishReason == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop, response.FinishReason);
        Assert.Equal(expected.Tokens.Count, response.Usage!.OutputTokenCount);
        Assert.Equal(expected.PromptTokens.Count, response.Usage.InputTokenCount);
        Assert.Equal("tiny", response.ModelId);

        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in chat.GetStreamingResponseAsync("Tell me a story", Greedy(24), Ct)) updates.Add(update);
        Assert.Equal(expected.Text, string.Concat(updates.Select(u => u.Text)));
        Assert.True(updates.Count > 2);
        Assert.NotNull(updates[^1].FinishReason);
        Assert.Equal(expected.Tokens.Count, updates.SelectMany(u => u.Contents).OfType<UsageContent>().Single().Details.OutputTokenCount);
        Assert.Equal(expected.Text, (await updates.ToAsyncEnumerable().ToChatResponseAsync(Ct)).Text);

        string stop = expected.Text!.Substring(expected.Text.Length / 2, 2);
        var stopped = await chat.GetResponseAsync("Tell me a story", new ChatOptions { Temperature = 0, MaxOutputTokens = 24, StopSequences = new[] { stop } }, Ct);
        Assert.Equal(Reference("Tell me a story", 24, new[] { stop }).Text, stopped.Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
        Assert.Equal("tern", chat.GetService<ChatClientMetadata>()!.ProviderName);
    }

    [Fact]
    public async Task LoadOpensAModelFolderAndAnswersAsTheGenerator()
    {
        var expected = Reference("Tell me a story", 8);
        using (IChatClient chat = TernChatClient.Load(fixture.Folder, new ModelLoadOptions { Device = DeviceKind.Cpu }))
        {
            var response = await chat.GetResponseAsync("Tell me a story", Greedy(8), Ct);
            Assert.Equal(expected.Text, response.Text);
            Assert.Equal(Path.GetFileName(fixture.Folder), response.ModelId);
        }
        string missing = Path.Combine(fixture.Folder, "missing");
        Assert.Contains(missing, Assert.ThrowsAny<Exception>(() => TernChatClient.Load(missing)).Message);
    }

    [Fact]
    public async Task InvalidOptionsAreRefusedWithTheField()
    {
        IChatClient chat = client;
        var tooLong = await Assert.ThrowsAsync<ServingException>(() => chat.GetResponseAsync("hi", new ChatOptions { MaxOutputTokens = 5000 }, Ct));
        Assert.Equal((ServingError.InvalidRequest, "max_tokens"), (tooLong.Error, tooLong.Field));
        var cold = await Assert.ThrowsAsync<ServingException>(() => chat.GetResponseAsync("hi", new ChatOptions { Temperature = -1 }, Ct));
        Assert.Equal(TernOption.Temperature, Assert.IsType<OptionException>(cold.InnerException).Option);
        await Assert.ThrowsAsync<ServingException>(async () =>
        {
            await foreach (var _ in chat.GetStreamingResponseAsync("hi", new ChatOptions { TopP = 0 }, Ct)) { }
        });
        Assert.Equal(3, (await chat.GetResponseAsync("hi", Greedy(3), Ct)).Usage!.OutputTokenCount); // still serving
    }

    [Fact]
    public async Task ConcurrentCallsShareTheBatchAndCancellationFreesTheSlot()
    {
        var prompts = ServingFixture.Prompts;
        var expected = prompts.Select(p => Reference(p, 12).Text).ToArray();
        var replies = await Task.WhenAll(prompts.Select(p => client.GetResponseAsync(new[] { new ChatMessage(ChatRole.User, p) }, Greedy(12), Ct)));
        Assert.Equal(expected, replies.Select(r => r.Text));

        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        int received = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var update in client.GetStreamingResponseAsync(new[] { new ChatMessage(ChatRole.User, "count") }, Greedy(200), cancel.Token))
                if (++received == 3) cancel.Cancel();
        });
        await ServingEngineTests.WaitFor(() => client.Engine.Stats.Running == 0);
        Assert.Equal(1, client.Engine.Stats.CancelledRequests);
    }

    /// <summary>Logprobs asked for through <see cref="ChatOptions.RawRepresentationFactory"/> (as M.E.AI's OpenAI adapter takes
    /// its provider's options) come back in the raw representations: the response's <see cref="SequenceOutput"/> and each
    /// streamed update's tokens, equal to <c>tern eval</c>'s scores (<see cref="Tern.Evaluation.TeacherForcing"/>) of the reply.</summary>
    [Fact]
    public async Task LogprobsComeBackInTheRawRepresentationsAsEvalScoresThem()
    {
        IChatClient chat = client;
        var options = new ChatOptions
        {
            Temperature = 0, MaxOutputTokens = 12,
            RawRepresentationFactory = _ => client.Defaults with { Logprobs = 3, IgnoreEos = true },
        };
        var response = await chat.GetResponseAsync("Tell me a story", options, Ct);
        var output = Assert.IsType<SequenceOutput>(response.RawRepresentation);
        Assert.Same(output, response.Messages[0].RawRepresentation);
        var logprobs = Assert.IsAssignableFrom<IReadOnlyList<TokenLogprob>>(output.Logprobs);
        Assert.Equal(12, logprobs.Count);
        Assert.Equal(output.Tokens, logprobs.Select(l => l.TokenId));
        var expected = Tern.Evaluation.TeacherForcing.Score(fixture.Model, new[] { output.PromptTokens.Concat(output.Tokens).ToArray() },
            new Tern.Evaluation.TeacherForcingOptions { PrefixLength = output.PromptTokens.Count }, Ct).LogProbs[0];
        for (int i = 0; i < logprobs.Count; i++)
        {
            Assert.Equal(expected[i], logprobs[i].Logprob, 2e-4f);
            Assert.Equal(3, logprobs[i].Top.Count);
        }

        // Streamed: the text updates carry the tokens they hold, logprobs included; the last update carries the whole output.
        var streamed = new List<GeneratedToken>();
        object? last = null;
        await foreach (var update in chat.GetStreamingResponseAsync("Tell me a story", options, Ct))
        {
            if (update.RawRepresentation is IReadOnlyList<GeneratedToken> tokens)
            {
                Assert.Equal(update.Text, string.Concat(tokens.Select(t => t.Text)));
                streamed.AddRange(tokens);
            }
            last = update.RawRepresentation;
        }
        Assert.Equal(output.Tokens, Assert.IsType<SequenceOutput>(last).Tokens);
        Assert.Equal(output.Tokens.Take(streamed.Count), streamed.Select(t => t.TokenId));
        for (int i = 0; i < streamed.Count; i++) Assert.Equal(logprobs[i].Logprob, streamed[i].Logprob!.Logprob, 2e-4f);

        // Without the factory's options there are none.
        Assert.Null(Assert.IsType<SequenceOutput>((await chat.GetResponseAsync("Tell me a story", Greedy(4), Ct)).RawRepresentation).Logprobs);
    }
}
