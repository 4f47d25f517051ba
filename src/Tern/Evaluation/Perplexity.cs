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

    /// <summary>Checks the values against the model's context.</summary>
    public (int Window, int Stride) Resolve(ModelInfo model)
    {
        int window = Window == 0 ? model.MaxPositions : Window;
        if (window < 2) throw new OptionException($"{TernOption.PerplexityWindow} must be at least 2 tokens (got {window}).");
        if (window > model.MaxPositions)
            throw new OptionException($"{TernOption.PerplexityWindow} {window} is longer than the model's context of {model.MaxPositions} (max_position_embeddings).");
        int stride = Stride == 0 ? Math.Max(1, window / 2) : Stride;
        // Windows must overlap by a token: a window's first token has no context of its own, the previous window scores it.
        if (stride < 1 || stride >= window) throw new OptionException($"{TernOption.PerplexityStride} must be in [1, window - 1 = {window - 1}] (got {stride}).");
        return (window, stride);
    }
}

/// <summary>The outcome of a perplexity evaluation.</summary>
/// <param name="ScoredTokens">Tokens whose probability was scored: every token but the first, exactly once.</param>
/// <param name="NegativeLogLikelihood">Sum of −ln p(token | context) over the scored tokens (nats).</param>
public sealed record PerplexityResult(long ScoredTokens, double NegativeLogLikelihood, int Windows, int Window, int Stride)
{
    /// <summary>Mean negative log-likelihood per scored token (nats).</summary>
    public double MeanNll => NegativeLogLikelihood / Math.Max(1, ScoredTokens);

    /// <summary>exp(mean NLL).</summary>
    public double Perplexity => Math.Exp(MeanNll);
}

/// <summary>
/// Perplexity of a long text with a sliding window (the evaluation of transformers' perplexity guide): windows of W tokens
/// start every S tokens; each window scores only the tokens no earlier window scored, so every token after the first is
/// scored exactly once, with between W − S and W − 1 tokens of context.
/// </summary>
public static class Perplexity
{
    /// <summary>Evaluates <paramref name="tokens"/>; <paramref name="progress"/> receives the fraction done.</summary>
    public static PerplexityResult Evaluate(CausalLanguageModel model, IReadOnlyList<int> tokens, PerplexityOptions options,
        IProgress<double>? progress = null, CancellationToken cancellation = default)
    {
        if (tokens.Count < 2) throw new ArgumentException("the text must hold at least 2 tokens to score one.");
        var (window, stride) = options.Resolve(model.Info);
        double nll = 0;
        long scored = 0;
        int windows = 0, scoredUpTo = 1; // token 0 has no context and is never scored
        for (int begin = 0; scoredUpTo < tokens.Count; begin += stride)
        {
            cancellation.ThrowIfCancellationRequested();
            int end = Math.Min(begin + window, tokens.Count);
            int first = Math.Max(scoredUpTo, begin + 1); // first position scored in this window
            if (first < end)
            {
                nll += WindowNll(model, tokens, begin, end, first);
                scored += end - first;
                scoredUpTo = end;
            }
            windows++;
            progress?.Report((double)scoredUpTo / tokens.Count);
            if (end == tokens.Count) break;
        }
        return new PerplexityResult(scored, nll, windows, window, stride);
    }

    /// <summary>Σ −ln p(x_t | x_begin..t−1) for t in [first, end), from one forward pass over [begin, end).</summary>
    static double WindowNll(CausalLanguageModel model, IReadOnlyList<int> tokens, int begin, int end, int first)
    {
        var ids = Enumerable.Range(begin, end - begin).Select(i => tokens[i]).ToArray();
        using var cache = model.CreateCache(1, ids.Length, maxStepTokens: ids.Length);
        using var scope = torch.NewDisposeScope();
        var logits = model.Forward(ForwardBatch.LeftPadded(new[] { ids }, model.Device), cache)[0]; // [T, V]
        // Position t−1 predicts token t.
        var predicting = logits.narrow(0, first - 1 - begin, end - first);
        var targets = torch.tensor(ids.Skip(first - begin).Select(x => (long)x).ToArray()).to(model.Device);
        var logProbs = F.log_softmax(predicting.to(ScalarType.Float32), -1);
        return -logProbs.gather(1, targets.unsqueeze(1)).sum().to(ScalarType.Float64).item<double>();
    }
}
