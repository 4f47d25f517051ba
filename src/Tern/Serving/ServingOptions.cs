using Tern.Prompting;
using Tern.Runtime;

namespace Tern.Serving;

/// <summary>Limits of a <see cref="ServingEngine"/>: how many sequences run together, how much KV cache they may reserve,
/// how many requests may wait, and the largest prompt and completion a request may ask for.</summary>
public sealed record ServingOptions
{
    /// <summary>Sequences decoded together (rows of the running batch plus requests with their own cache policy).</summary>
    public int MaxBatchSize { get; init; } = 32;

    /// <summary>KV-cache tokens the running requests may reserve together: each reserves prompt + max new tokens (its cache's
    /// capacity under a KV policy); a request waits while it does not fit. 0 = <see cref="MaxBatchSize"/> × the model's context.</summary>
    public int KvBudgetTokens { get; init; }

    /// <summary>Requests that may wait for a slot; one more is refused (<see cref="ServingError.Overloaded"/>).</summary>
    public int MaxQueue { get; init; } = 256;

    /// <summary>Longest prompt in tokens; 0 = the model's context minus one.</summary>
    public int MaxPromptTokens { get; init; }

    /// <summary>Most new tokens a request may ask for.</summary>
    public int MaxNewTokens { get; init; } = 1024;

    /// <summary>Prompt tokens prefilled at one step boundary: joiners past it wait for the next step, and a longer prompt is
    /// prefilled in chunks of this many tokens, one per step, so the running sequences never stall for long.</summary>
    public int MaxPrefillTokensPerStep { get; init; } = 4096;

    /// <summary>Diagnostics: count the occupied cache entries on the device at every step boundary
    /// (<see cref="ServingStats.MeasuredKvBytes"/>), at the cost of a device read per layer and step.</summary>
    public bool MeasureKvCache { get; init; }

    /// <summary>On CUDA, pools of 16-bit caches decode through a CUDA graph per pool shape (static shapes over the pool's
    /// allocated rows, free rows masked); false steps eagerly.</summary>
    public bool UseCudaGraphs { get; init; } = true;

    /// <summary>Queue each decode step before streaming the previous step's tokens (vLLM's asynchronous scheduling): the
    /// device never waits while the host detokenizes, streams and schedules, and a sequence whose stop is seen late steps once
    /// more (discarded). Null: on CUDA only — on the CPU the host computes the steps itself, and overlapping would only delay
    /// each token by a step.</summary>
    public bool? OverlapSteps { get; init; }

    /// <summary>When requests of several KV cache configurations run (pools of different policies), step them in one forward
    /// pass (the weights read once for every row, attention per pool) rather than one pass per pool; that pass runs with
    /// dynamic shapes (no CUDA graph).</summary>
    public bool StepPoolsTogether { get; init; } = true;

    /// <summary>
    /// Soft prompts (<c>tern prompt train</c>) served by name: a request picks one by its name, and the one named ""
    /// (<see cref="DefaultSoftPrompt"/>), when given, runs before every request that names none. Each prompt's n entries are
    /// prefilled once per KV cache configuration and copied into a row's cache when the row joins its pool; its text positions
    /// start at n, and the entries count in the row's cache (the context left to prompt and max_tokens, reserved tokens).
    /// Rows of different prompts share a pool. A model stepped in blocks (offloaded) prefills a prompt with each block (every
    /// row of a block runs after the same prompt, or none, under one cache configuration; the next request of another starts the
    /// next block), its entries what that configuration keeps of it, as in memory. A request opts out of the
    /// default prompt by naming <see cref="NoSoftPrompt"/>. The engine copies the prompts when it starts: the caller keeps its own.
    /// </summary>
    public IReadOnlyDictionary<string, SoftPrompt>? SoftPrompts { get; init; }

    /// <summary>The name of the soft prompt that runs before requests that name none.</summary>
    public const string DefaultSoftPrompt = "";

    /// <summary>The name a request gives to run after no soft prompt, not even the default one (no prompt may take it).</summary>
    public const string NoSoftPrompt = "none";

    /// <summary>Tests: the static-shape step without a graph, so CPU runs prove the body a graph captures.</summary>
    internal bool ForceStaticShapes { get; init; }

    /// <summary>Checks the values, with messages that name the option.</summary>
    public void Validate()
    {
        if (MaxBatchSize < 1) throw new OptionException($"{TernOption.MaxBatchSize} must be at least 1 (got {MaxBatchSize}).");
        if (KvBudgetTokens < 0) throw new OptionException($"{TernOption.KvBudgetTokens} must be >= 0 (got {KvBudgetTokens}; 0 = batch x context).");
        if (MaxQueue < 0) throw new OptionException($"{TernOption.MaxQueue} must be >= 0 (got {MaxQueue}).");
        if (MaxPromptTokens < 0) throw new OptionException($"{TernOption.MaxPromptTokens} must be >= 0 (got {MaxPromptTokens}; 0 = the model's context).");
        if (MaxNewTokens < 1) throw new OptionException($"{TernOption.ServingMaxNewTokens} must be at least 1 (got {MaxNewTokens}).");
        if (MaxPrefillTokensPerStep < 1) throw new OptionException($"{TernOption.MaxPrefillTokensPerStep} must be at least 1 (got {MaxPrefillTokensPerStep}).");
        foreach (string name in SoftPrompts?.Keys ?? Enumerable.Empty<string>())
            if (!name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
                throw new OptionException($"{TernOption.SoftPromptFile}: a prompt's name is letters, digits, '-', '_' or '.' (got '{name}').");
            else if (name == NoSoftPrompt)
                throw new OptionException($"{TernOption.SoftPromptFile}: '{NoSoftPrompt}' names no prompt (a request opts out of the default one with it); choose another name.");
    }
}

/// <summary>Why a <see cref="ServingEngine"/> refused or ended a request.</summary>
public enum ServingError
{
    /// <summary>The request is invalid or past a limit (HTTP 400).</summary>
    InvalidRequest,
    /// <summary>The waiting queue is full (HTTP 429).</summary>
    Overloaded,
    /// <summary>The engine is stopping or stopped (HTTP 503).</summary>
    Unavailable,
}

/// <summary>A request refused by the <see cref="ServingEngine"/>, with the request field to blame when there is one; an
/// invalid option keeps its <see cref="OptionException"/> as the inner exception, for a server to name in its own words.</summary>
public sealed class ServingException(ServingError error, string message, string? field = null, Exception? inner = null)
    : Exception(message, inner)
{
    /// <summary>The kind of refusal.</summary>
    public ServingError Error { get; } = error;

    /// <summary>The request field at fault (OpenAI's <c>param</c>), or null.</summary>
    public string? Field { get; } = field;
}

/// <summary>A snapshot of the engine's load, updated at every step boundary.</summary>
/// <param name="Running">Sequences in the running batches.</param>
/// <param name="Waiting">Requests waiting for a slot.</param>
/// <param name="ReservedTokens">KV tokens the running requests reserve (against <see cref="ServingOptions.KvBudgetTokens"/>).</param>
/// <param name="LiveKvBytes">Bytes of the keys and values the running sequences hold.</param>
/// <param name="AllocatedKvBytes">Bytes of KV cache allocated (each pool grows and shrinks with the load).</param>
/// <param name="Steps">Decode steps run so far.</param>
/// <param name="GeneratedTokens">Tokens generated so far, over all requests.</param>
/// <param name="CompletedRequests">Requests finished (stopped or at their limit).</param>
/// <param name="CancelledRequests">Requests cancelled by their caller.</param>
/// <param name="MeasuredKvBytes">With <see cref="ServingOptions.MeasureKvCache"/>: the occupied slots counted in the caches
/// themselves (every layer and KV head) times the bytes of a 16-bit-policy entry, to hold against
/// <paramref name="LiveKvBytes"/>; else -1.</param>
/// <param name="Pools">Batches stepped at each step: one per KV cache configuration among the running requests.</param>
/// <param name="Prefills">Forward passes that prefilled joining requests (joiners of one boundary share one).</param>
/// <param name="PrefillSeconds">Scheduler time spent admitting joiners: their prefills and the moves of their entries into the
/// running rows (host time; the device work it queues is waited for by the steps that follow).</param>
/// <param name="GraphCaptures">CUDA graphs captured for decode steps (a pool re-captures when it is resized or the set of pools
/// stepped together changes).</param>
public sealed record ServingStats(int Running, int Waiting, long ReservedTokens, long LiveKvBytes, long AllocatedKvBytes,
    long Steps, long GeneratedTokens, long CompletedRequests, long CancelledRequests, long MeasuredKvBytes = -1, int Pools = 0,
    long Prefills = 0, double PrefillSeconds = 0, long GraphCaptures = 0);
