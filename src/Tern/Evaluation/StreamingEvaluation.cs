using System.Diagnostics;
using Tern.Caching;
using Tern.Models;

namespace Tern.Evaluation;

/// <summary>How <see cref="StreamingEvaluation.Run"/> cuts and reports a long text.</summary>
public sealed record StreamingEvaluationOptions
{
    /// <summary>Contiguous pieces of the text scored side by side as one batch (each its own stream from position 0).</summary>
    public int Streams { get; init; } = 8;

    /// <summary>Tokens per stream; 0 = the text divided evenly among the streams.</summary>
    public int TokensPerStream { get; init; }

    /// <summary>Width of the position buckets perplexity is reported in.</summary>
    public int BucketSize { get; init; } = 1024;

    /// <summary>When set, every stream begins with this token id (then <see cref="TokensPerStream"/> − 1 tokens of text), for
    /// models trained with a fixed first token (<c>tern train --start-token</c>): the token they may sink attention on.</summary>
    public int? StartToken { get; init; }
}

/// <summary>Perplexity by position of one policy over a long text.</summary>
/// <param name="BucketNll">Mean NLL (nats) of the targets whose position in their stream falls in each bucket.</param>
public sealed record StreamingEvaluationResult(string Policy, int Streams, int TokensPerStream, int BucketSize, double[] BucketNll,
    long[] BucketTokens, double MeanNll, double Seconds)
{
    /// <summary>exp(mean NLL) over every scored token.</summary>
    public double Perplexity => Math.Exp(MeanNll);
}

/// <summary>
/// StreamingLLM's long-text experiment (Xiao et al. 2023, §4.1, fig. 3/5): the text is fed one token at a time through a KV
/// policy far past the model's trained context, and the NLL of each next token is reported by its position. The dense cache
/// and a plain window fail once positions pass the context or the first tokens leave the cache; sinks + window stay flat.
/// </summary>
public static class StreamingEvaluation
{
    /// <summary>Scores <paramref name="tokens"/> under the KV-cache policy <paramref name="policy"/> names.</summary>
    public static StreamingEvaluationResult Run(CausalLanguageModel model, IReadOnlyList<int> tokens, KvPolicyOptions policy,
        StreamingEvaluationOptions options, IProgress<double>? progress = null, CancellationToken cancellation = default)
    {
        if (options.Streams < 1) throw new ArgumentException($"streams must be at least 1 (got {options.Streams}).");
        if (options.BucketSize < 1) throw new ArgumentException($"the bucket size must be at least 1 (got {options.BucketSize}).");
        int perStream = options.TokensPerStream > 0 ? options.TokensPerStream : tokens.Count / options.Streams;
        if (perStream < 2 || (long)perStream * options.Streams > tokens.Count)
            throw new ArgumentException($"the text has {tokens.Count:N0} tokens: too few for {options.Streams} streams of {Math.Max(perStream, 2):N0}.");
        if (options.StartToken is { } start && (start < 0 || start >= model.Info.VocabSize))
            throw new ArgumentException($"the start token {start} is outside the model's vocabulary of {model.Info.VocabSize}.");
        var streams = Enumerable.Range(0, options.Streams).Select(s => (IReadOnlyList<int>)(options.StartToken is { } first
            ? tokens.Skip(s * perStream).Take(perStream - 1).Prepend(first).ToArray()
            : tokens.Skip(s * perStream).Take(perStream).ToArray())).ToArray();

        var clock = Stopwatch.StartNew();
        var scores = TeacherForcing.Score(model, streams, new TeacherForcingOptions { PrefixLength = 1, Progress = progress }.WithKvPolicy(policy), cancellation);
        int buckets = (perStream + options.BucketSize - 1) / options.BucketSize; // targets sit at positions 1 .. perStream - 1
        var sum = new double[buckets];
        var count = new long[buckets];
        foreach (var row in scores.LogProbs)
            for (int j = 0; j < row.Length; j++)
            {
                int position = j + 1; // the target's position in its stream
                sum[position / options.BucketSize] -= row[j];
                count[position / options.BucketSize]++;
            }
        return new StreamingEvaluationResult(policy.Policy, options.Streams, perStream, options.BucketSize,
            sum.Select((s, k) => count[k] > 0 ? s / count[k] : double.NaN).ToArray(), count, sum.Sum() / count.Sum(),
            clock.Elapsed.TotalSeconds);
    }
}
