using Tern.Caching;
using Tern.Runtime;
using static TorchSharp.torch;

namespace Tern.Generation;

/// <summary>How to continue prompts. Names follow Hugging Face <c>generate</c>; temperature 0 means greedy decoding.</summary>
public sealed record GenerationOptions
{
    /// <summary>Upper bound on generated tokens per sequence (<c>max_new_tokens</c>).</summary>
    public int MaxNewTokens { get; init; } = 128;

    /// <summary>Softmax temperature; 0 selects greedy (arg-max) decoding, &gt; 0 samples.</summary>
    public double Temperature { get; init; }

    /// <summary>Keep only the k most likely tokens before sampling; 0 disables.</summary>
    public int TopK { get; init; }

    /// <summary>Nucleus sampling: keep the smallest set of tokens whose probability reaches p; 1 disables.</summary>
    public double TopP { get; init; } = 1.0;

    /// <summary>CTRL-style penalty (Keskar et al. 2019) on tokens already in the prompt or output; 1 disables.</summary>
    public double RepetitionPenalty { get; init; } = 1.0;

    /// <summary>Seed of the sampler; null draws one at random.</summary>
    public long? Seed { get; init; }

    /// <summary>Generation of a sequence stops once its text contains one of these; the text returned ends before it.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = Array.Empty<string>();

    /// <summary>Token ids that end a sequence; null uses the model's end-of-sequence ids.</summary>
    public IReadOnlyList<int>? StopTokenIds { get; init; }

    /// <summary>When true, end-of-sequence tokens do not stop generation (benchmarks, parity tests).</summary>
    public bool IgnoreEos { get; init; }

    /// <summary>On CUDA, run greedy decode steps as CUDA-graph replays when the request allows it (full cache).</summary>
    public bool UseCudaGraphs { get; init; } = true;

    /// <summary>Tests only: run the static-shape decode step (the body a CUDA graph captures) on any device, without capture.</summary>
    internal bool ForceStaticShapes { get; init; }

    /// <summary>The KV cache of the request (eviction, bits, position rolling); null is the full 16-bit cache.</summary>
    public KvCacheConfig? Cache { get; init; }

    /// <summary>StreamingLLM's re-computation baseline: once a sequence is longer than this window (a token count, or a ratio
    /// of prompt + new tokens), every step clears the cache and re-runs the last window tokens at positions from 0 instead
    /// of appending. Null appends as usual. An evaluation baseline: CUDA graphs and serving do not run it.</summary>
    public KvBudget? RecomputeWindow { get; init; }

    /// <summary>Runs the prompt through the model in steps of at most this many tokens (0 = one step). The cache then needs
    /// room for one chunk rather than the whole prompt beyond its budget, which is what lets an evicting policy hold a large
    /// batch; with the full cache the result is the same. (With an evicting policy the prompt's later tokens see only what
    /// the policy kept of the earlier chunks.)</summary>
    public int PrefillChunk { get; init; }

    /// <summary>When true the result keeps every step's next-token logits (transformers' <c>output_logits</c>): fp32
    /// [batch, vocab] on the CPU, prefill first (<see cref="GenerationResult.Logits"/>). Steps then run eagerly.</summary>
    public bool OutputLogits { get; init; }

    /// <summary>Null: no logprobs. n in [0, <see cref="TokenLogprob.MaxTop"/>]: every generated token carries its logprob and
    /// the n most likely tokens at its position (<see cref="GeneratedToken.Logprob"/>, <see cref="SequenceOutput.Logprobs"/>).
    /// Logprobs are of the raw model distribution (see <see cref="TokenLogprob"/>).</summary>
    public int? Logprobs { get; init; }

    /// <summary>Null: the prompt is not scored. n in [0, <see cref="TokenLogprob.MaxTop"/>]: every prompt token but the first
    /// gets its logprob and the n most likely tokens (<see cref="SequenceOutput.PromptLogprobs"/>; an echo's scores), from
    /// one extra forward pass over the prompt.</summary>
    public int? PromptLogprobs { get; init; }

    /// <summary>A rule on which tokens may come next (e.g. <see cref="Structured.JsonConstraint"/>); null: any token. Each
    /// sequence gets its own state; the mask applies to the logits before sampling.</summary>
    public ITokenConstraint? Constraint { get; init; }

    /// <summary>These options with the KV-cache policy <paramref name="kv"/> names (validated): its cache, and for
    /// window-recompute its window.</summary>
    public GenerationOptions WithKvPolicy(KvPolicyOptions kv) => this with { Cache = KvCachePolicies.Create(kv), RecomputeWindow = kv.RecomputeWindow };

    /// <summary>The new tokens a prompt of <paramref name="promptTokens"/> tokens gets: <see cref="MaxNewTokens"/>, cut to the
    /// model's context unless the cache rolls positions (positions by cache index stay below its capacity).</summary>
    public int NewTokensFor(Models.ModelInfo info, int promptTokens) =>
        Cache?.RollPositions == true ? MaxNewTokens : Math.Min(MaxNewTokens, info.MaxPositions - promptTokens);

    /// <summary>Checks the values, with messages that name the option.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 1) throw new OptionException($"{TernOption.MaxNewTokens} must be at least 1 (got {MaxNewTokens}).");
        if (PrefillChunk < 0) throw new OptionException($"{TernOption.PrefillChunk} must be >= 0 (got {PrefillChunk}).");
        if (Temperature < 0 || double.IsNaN(Temperature)) throw new OptionException($"{TernOption.Temperature} must be >= 0 (got {Temperature}).");
        if (TopK < 0) throw new OptionException($"{TernOption.TopK} must be >= 0 (got {TopK}).");
        if (!(TopP > 0 && TopP <= 1)) throw new OptionException($"{TernOption.TopP} must be in (0, 1] (got {TopP}).");
        if (!(RepetitionPenalty > 0)) throw new OptionException($"{TernOption.RepetitionPenalty} must be > 0 (got {RepetitionPenalty}).");
        if (Logprobs is < 0 or > TokenLogprob.MaxTop) throw new OptionException($"{TernOption.Logprobs} must be in [0, {TokenLogprob.MaxTop}] (got {Logprobs}).");
        if (PromptLogprobs is < 0 or > TokenLogprob.MaxTop) throw new OptionException($"{TernOption.PromptLogprobs} must be in [0, {TokenLogprob.MaxTop}] (got {PromptLogprobs}).");
    }
}

/// <summary>Why a sequence stopped.</summary>
public enum FinishReason
{
    /// <summary>It reached the token limit (or the model's context).</summary>
    Length,
    /// <summary>It produced a stop token id.</summary>
    StopToken,
    /// <summary>Its text contains a stop string.</summary>
    StopString,
}

/// <summary>One continued prompt.</summary>
/// <param name="Logprobs">With <see cref="GenerationOptions.Logprobs"/>: one entry per generated token; null otherwise.</param>
/// <param name="PromptLogprobs">With <see cref="GenerationOptions.PromptLogprobs"/>: one entry per prompt token, the first
/// null (it has no context); null otherwise.</param>
public sealed record SequenceOutput(IReadOnlyList<int> PromptTokens, IReadOnlyList<int> Tokens, string? Text, FinishReason FinishReason,
    IReadOnlyList<TokenLogprob>? Logprobs = null, IReadOnlyList<TokenLogprob?>? PromptLogprobs = null);

/// <summary>Timings of a generation call.</summary>
/// <param name="Graphs">How the decode steps ran when they went through static-shape steps (CUDA graphs, or their eager body
/// where nothing is captured); null when they ran as ordinary steps.</param>
public sealed record GenerationStats(int BatchSize, int PromptTokens, int GeneratedTokens, int DecodeSteps, TimeSpan Prefill, TimeSpan Decode,
    GraphSteps? Graphs = null)
{
    /// <summary>Prompt tokens per second of the prefill.</summary>
    public double PrefillTokensPerSecond => PromptTokens / Math.Max(Prefill.TotalSeconds, 1e-9);
    /// <summary>Generated tokens per second over the decode steps (all sequences of the batch).</summary>
    public double DecodeTokensPerSecond => DecodeSteps * BatchSize / Math.Max(Decode.TotalSeconds, 1e-9);
    /// <summary>Milliseconds per decode step.</summary>
    public double DecodeMillisecondsPerStep => Decode.TotalMilliseconds / Math.Max(DecodeSteps, 1);
}

/// <summary>How a generation's static-shape decode steps ran: graphs captured, steps replayed, and steps whose body ran eagerly
/// (where a step that evicts is not captured, its cost shows here).</summary>
public sealed record GraphSteps(int Captures, int Replays, int EagerSteps);

/// <summary>The outputs of a batch, in prompt order, and its timings.</summary>
/// <param name="Logits">With <see cref="GenerationOptions.OutputLogits"/>: each step's next-token logits, fp32 [batch, vocab] on
/// the CPU (the caller disposes them); null otherwise.</param>
public sealed record GenerationResult(IReadOnlyList<SequenceOutput> Sequences, GenerationStats Stats, IReadOnlyList<Tensor>? Logits = null);

/// <summary>A token as it is produced: which sequence, the id, and the text it completed (may be empty while a
/// multi-byte character is still incomplete), with its logprob when <see cref="GenerationOptions.Logprobs"/> asks.</summary>
public sealed record GeneratedToken(int Sequence, int TokenId, string Text, TokenLogprob? Logprob = null);
