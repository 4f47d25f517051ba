using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Evaluation;

/// <summary>How to slide over a long text.</summary>
public sealed record PerplexityOptions
{
    /// <summary>Tokens per window (the context each prediction may use); 0 uses the model's context.</summary>
    public int Window { get; init; }

    /// <summary>How far each window moves, less than the window; 0 uses half the window. Smaller strides give each scored token
    /// more context (at least window − stride tokens) at the cost of more forward passes.</summary>
    public int Stride { get; init; }

    /// <summary>Checks the values against the model's context, of which a soft prompt takes <paramref name="promptLength"/> positions.</summary>
    public (int Window, int Stride) Resolve(ModelInfo model, int promptLength = 0)
    {
        int context = model.MaxPositions - promptLength;
        int window = Window == 0 ? context : Window;
        if (window < 2) throw new OptionException($"{TernOption.PerplexityWindow} must be at least 2 tokens (got {window}).");
        if (window > context && promptLength == 0)
            throw new OptionException($"{TernOption.PerplexityWindow} {window} is longer than the model's context of {model.MaxPositions} (max_position_embeddings).");
        if (window > context)
            throw new OptionException($"{TernOption.PerplexityWindow} {window} plus the soft prompt's {promptLength} positions is longer than the model's context of {model.MaxPositions} (max_position_embeddings); use a window of at most {context}.");
        int stride = Stride == 0 ? Math.Max(1, window / 2) : Stride;
        // Windows must overlap by a token: a window's first token has no context of its own, the previous window scores it.
        if (stride < 1 || stride >= window) throw new OptionException($"{TernOption.PerplexityStride} must be in [1, window - 1 = {window - 1}] (got {stride}).");
        return (window, stride);
    }
}

/// <summary>The outcome of a perplexity evaluation.</summary>
/// <param name="ScoredTokens">Tokens whose probability was scored: every token but the first, exactly once.</param>
/// <param name="NegativeLogLikelihood">Sum of −ln p(token | context) over the scored tokens (nats).</param>
/// <param name="PromptLength">Positions a soft prompt took before every window (0: none).</param>
/// <param name="ReleasedMeanNll">The mean NLL as Compress-Then-Prompt's released evaluator computes it: per window, the
/// scored losses summed over all n + L − 1 predicted positions, prompt positions counted as zeros, then averaged over
/// windows. Biased low by ≈ (L − 1) / (n + L − 1) with a prompt; equal to <see cref="MeanNll"/> without one when every
/// window scores L − 1 tokens (stride = window − 1). For comparison with published numbers only.</param>
public sealed record PerplexityResult(long ScoredTokens, double NegativeLogLikelihood, int Windows, int Window, int Stride,
    int PromptLength = 0, double ReleasedMeanNll = double.NaN)
{
    /// <summary>Mean negative log-likelihood per scored token (nats).</summary>
    public double MeanNll => NegativeLogLikelihood / Math.Max(1, ScoredTokens);

    /// <summary>exp(mean NLL).</summary>
    public double Perplexity => Math.Exp(MeanNll);

    /// <summary>exp(<see cref="ReleasedMeanNll"/>): the released evaluator's perplexity.</summary>
    public double ReleasedPerplexity => Math.Exp(ReleasedMeanNll);
}

/// <summary>
/// Perplexity of a long text with a sliding window (the evaluation of transformers' perplexity guide): windows of W tokens
/// start every S tokens; each window scores only the tokens no earlier window scored, so every token after the first is
/// scored exactly once, with between W − S and W − 1 tokens of context. With a soft prompt of n vectors every window is
/// preceded by it (positions 0..n−1, the text at n..n+W−1) and the same tokens are scored, so prompted and plain results
/// compare token for token: NLL = Σ real-token losses / number of real predicted tokens, prompt positions never counted.
/// </summary>
public static class Perplexity
{
    /// <summary>Evaluates <paramref name="tokens"/>; <paramref name="progress"/> receives the fraction done.</summary>
    public static PerplexityResult Evaluate(CausalLanguageModel model, IReadOnlyList<int> tokens, PerplexityOptions options,
        IProgress<double>? progress = null, CancellationToken cancellation = default) => Evaluate(model, tokens, options, null, progress, cancellation);

    /// <summary>Evaluates <paramref name="tokens"/> with <paramref name="prompt"/> (null or empty: none) before every window.</summary>
    public static PerplexityResult Evaluate(CausalLanguageModel model, IReadOnlyList<int> tokens, PerplexityOptions options,
        Prompting.SoftPrompt? prompt, IProgress<double>? progress = null, CancellationToken cancellation = default)
    {
        if (tokens.Count < 2) throw new ArgumentException("the text must hold at least 2 tokens to score one.");
        int n = prompt?.Length ?? 0;
        var (window, stride) = options.Resolve(model.Info, n);
        double nll = 0, released = 0;
        long scored = 0;
        int windows = 0, scoringWindows = 0, scoredUpTo = 1; // token 0 has no context and is never scored
        for (int begin = 0; scoredUpTo < tokens.Count; begin += stride)
        {
            cancellation.ThrowIfCancellationRequested();
            int end = Math.Min(begin + window, tokens.Count);
            int first = Math.Max(scoredUpTo, begin + 1); // first position scored in this window
            if (first < end)
            {
                double windowNll = WindowNll(model, tokens, begin, end, first, n == 0 ? null : prompt);
                nll += windowNll;
                released += windowNll / (n + end - begin - 1);
                scoringWindows++;
                scored += end - first;
                scoredUpTo = end;
            }
            windows++;
            progress?.Report((double)scoredUpTo / tokens.Count);
            if (end == tokens.Count) break;
        }
        return new PerplexityResult(scored, nll, windows, window, stride, n, released / scoringWindows);
    }

    /// <summary>Σ −ln p(x_t | prompt, x_begin..t−1) for t in [first, end), from one forward pass over [prompt, begin, end).</summary>
    static double WindowNll(CausalLanguageModel model, IReadOnlyList<int> tokens, int begin, int end, int first, Prompting.SoftPrompt? prompt)
    {
        int n = prompt?.Length ?? 0;
        var ids = Enumerable.Repeat(0, n).Concat(Enumerable.Range(begin, end - begin).Select(i => tokens[i])).ToArray(); // 0: placeholders under the prompt
        using var cache = model.CreateCache(1, ids.Length, maxStepTokens: ids.Length);
        using var scope = torch.NewDisposeScope();
        var plain = ForwardBatch.LeftPadded(new[] { ids }, model.Device);
        var batch = prompt is null ? plain : new ForwardBatch
        {
            InputIds = plain.InputIds, Positions = plain.Positions, RealTokens = plain.RealTokens, MaxPosition = plain.MaxPosition,
            PrefixEmbeddings = prompt.Embeddings.to(model.Device),
        };
        var logits = model.Forward(batch, cache)[0]; // [n + T, V]
        // Position n + t − 1 predicts token t of the window.
        var predicting = logits.narrow(0, n + first - 1 - begin, end - first);
        var targets = torch.tensor(Enumerable.Range(first, end - first).Select(i => (long)tokens[i]).ToArray()).to(model.Device);
        var logProbs = F.log_softmax(predicting.to(ScalarType.Float32), -1);
        return -logProbs.gather(1, targets.unsqueeze(1)).sum().to(ScalarType.Float64).item<double>();
    }
}
