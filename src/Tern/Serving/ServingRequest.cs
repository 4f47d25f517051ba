using Tern.Caching;
using System.Threading.Channels;
using Tern.Generation;
using Tern.Prompting;

namespace Tern.Serving;

/// <summary>
/// A request submitted to a <see cref="ServingEngine"/>: its tokens arrive on <see cref="Tokens"/> as the engine produces
/// them, and <see cref="Completion"/> gives the whole output once it stops. Cancelling the token passed to
/// <see cref="ServingEngine.Submit(IReadOnlyList{int}, GenerationOptions, CancellationToken)"/> drops it at the next step
/// boundary (its cache slot is freed); both then end with an <see cref="OperationCanceledException"/>.
/// </summary>
public sealed class ServingRequest
{
    readonly Channel<GeneratedToken> tokens = Channel.CreateUnbounded<GeneratedToken>(new UnboundedChannelOptions { SingleWriter = true });
    readonly TaskCompletionSource<SequenceOutput> completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal ServingRequest(IReadOnlyList<int> prompt, GenerationOptions options, PromptedModel? softPrompt, KvCacheConfig cache,
        int maxNewTokens, int reservedTokens, CancellationToken cancellation)
    {
        SoftPrompt = softPrompt;
        Cache = cache;
        PromptTokens = prompt;
        Options = options;
        MaxNewTokens = maxNewTokens;
        ReservedTokens = reservedTokens;
        Cancellation = cancellation;
    }

    /// <summary>The prompt's token ids.</summary>
    public IReadOnlyList<int> PromptTokens { get; }

    /// <summary>How the prompt is continued.</summary>
    public GenerationOptions Options { get; }

    /// <summary>New tokens at most: the request's limit, capped by the model's context for caches that do not roll positions.</summary>
    public int MaxNewTokens { get; }

    /// <summary>Every generated token in order, with the text it completes (<see cref="GeneratedToken.Sequence"/> is 0).</summary>
    public ChannelReader<GeneratedToken> Tokens => tokens.Reader;

    /// <summary>With <see cref="GenerationOptions.PromptLogprobs"/>: the prompt's scores, set before the first token arrives on
    /// <see cref="Tokens"/> (a stream can echo them first); null otherwise.</summary>
    public IReadOnlyList<TokenLogprob?>? PromptLogprobs { get; internal set; }

    /// <summary>Vectors of the soft prompt the request runs after (0: none): positions its row holds before
    /// <see cref="PromptTokens"/>, which do not count among them.</summary>
    public int SoftPromptTokens => SoftPrompt?.PromptLength ?? 0;

    /// <summary>The output once the request stops.</summary>
    public Task<SequenceOutput> Completion => completion.Task;

    internal int ReservedTokens { get; }

    /// <summary>The soft prompt the request runs after (its entries start the row), or null.</summary>
    internal PromptedModel? SoftPrompt { get; }

    /// <summary>Entries the request's row holds once its prompt is prefilled: the soft prompt's and the prompt's.</summary>
    internal int PrefilledTokens => SoftPromptTokens + PromptTokens.Count;

    /// <summary>The request's KV cache with ratio budgets resolved for its own length: the key of the pool it runs in.</summary>
    internal KvCacheConfig Cache { get; }

    internal CancellationToken Cancellation { get; }

    internal void Write(GeneratedToken token) => tokens.Writer.TryWrite(token);

    internal void Complete(SequenceOutput output)
    {
        tokens.Writer.TryComplete();
        completion.TrySetResult(output);
    }

    internal void Fail(Exception error)
    {
        tokens.Writer.TryComplete(error);
        if (error is OperationCanceledException oce) completion.TrySetCanceled(oce.CancellationToken);
        else completion.TrySetException(error);
    }
}
