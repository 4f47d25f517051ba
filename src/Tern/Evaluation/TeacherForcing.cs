using Tern.Caching;
using Tern.Generation;
using Tern.Models;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Evaluation;

/// <summary>How <see cref="TeacherForcing.Score"/> runs.</summary>
public sealed record TeacherForcingOptions
{
    /// <summary>The KV cache the model runs over; null = the full 16-bit cache.</summary>
    public KvCacheConfig? Cache { get; init; }

    /// <summary>StreamingLLM's re-computation baseline, as <see cref="GenerationOptions.RecomputeWindow"/> (a ratio is of
    /// the longest sequence); null appends every token.</summary>
    public KvBudget? RecomputeWindow { get; init; }

    /// <summary>These options with the KV-cache policy <paramref name="kv"/> names (validated): its cache, and for
    /// window-recompute its window.</summary>
    public TeacherForcingOptions WithKvPolicy(KvPolicyOptions kv) => this with { Cache = KvCachePolicies.Create(kv), RecomputeWindow = kv.RecomputeWindow };

    /// <summary>Tokens of every sequence run as one prefill (as a prompt would be) before the one-token steps; at least 1.</summary>
    public int PrefixLength { get; init; } = 1;

    /// <summary>Receives the fraction of steps done.</summary>
    public IProgress<double>? Progress { get; init; }
}

/// <summary>Per-token results of <see cref="TeacherForcing.Score"/>: column j is the target token at position
/// <see cref="PrefixLength"/> + j of each sequence; positions past a sequence's end hold NaN and -1.</summary>
/// <param name="LogProbs">log p(target | every earlier token the cache still holds), natural log.</param>
/// <param name="Argmax">The model's most likely token at that point.</param>
public sealed record TeacherForcingResult(float[][] LogProbs, int[][] Argmax, int PrefixLength);

/// <summary>
/// Scores given text under a KV-cache policy exactly as generation would meet it: the prefix runs as one prefill, then every
/// later token is fed as a one-token decode step (the true token, not a sampled one), so the policy evicts, re-positions and
/// recomputes as it does in <see cref="Generation.Generator"/>. The common core of the stream, budget and multiple-choice
/// evaluations.
/// </summary>
public static class TeacherForcing
{
    /// <summary>Scores every token after the prefix of each sequence (sequences may differ in length; shorter ones are padded
    /// at the end and their padding is not scored). The batch runs as one: a cache of batch = sequences.</summary>
    public static TeacherForcingResult Score(IStepModel model, IReadOnlyList<IReadOnlyList<int>> sequences,
        TeacherForcingOptions options, CancellationToken cancellation = default)
    {
        int batch = sequences.Count, prefix = options.PrefixLength;
        if (batch == 0) throw new ArgumentException("no sequences to score.");
        if (prefix < 1) throw new ArgumentException($"the prefix must hold at least one token (got {prefix}).");
        if (sequences.Min(s => s.Count) <= prefix)
            throw new ArgumentException($"every sequence needs more than the {prefix} prefix tokens (the shortest has {sequences.Min(s => s.Count)}).");
        int length = sequences.Max(s => s.Count), targets = length - prefix;
        var device = model.Device;
        var recompute = WindowRecompute.For(options.RecomputeWindow, length);

        using var scope = torch.NewDisposeScope();
        using var runner = model.CreateRunner(batch, length, prefix, options.Cache);
        var padded = new long[batch * length];
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < sequences[b].Count; t++) padded[b * length + t] = sequences[b][t];
        var ids = torch.tensor(padded, new long[] { batch, length }).to(device);
        var logProbs = torch.empty(new long[] { batch, targets }, ScalarType.Float32, device);
        var argmax = torch.empty(new long[] { batch, targets }, ScalarType.Int64, device);

        void Record(int column, Tensor logits)
        {
            using var stepScope = torch.NewDisposeScope();
            var target = ids.narrow(1, prefix + column, 1);
            logProbs.narrow(1, column, 1).copy_(F.log_softmax(logits.to(ScalarType.Float32), -1).gather(1, target));
            argmax.narrow(1, column, 1).copy_(logits.argmax(-1, keepdim: true));
        }
        // The tokens each sequence has fed after `fed` steps, for the re-computation baseline.
        IReadOnlyList<int>[] Fed(int count) => sequences.Select(s => (IReadOnlyList<int>)s.Take(count).ToArray()).ToArray();

        var prefill = ForwardBatch.LeftPadded(Fed(prefix), device, lastPositionOnly: true);
        Record(0, recompute?.Applies(prefix) == true ? recompute.Run(runner, device, Fed(prefix)) : runner.Forward(prefill));
        var ones = Enumerable.Repeat(1, batch).ToArray();
        for (int t = prefix; t < length - 1; t++)
        {
            cancellation.ThrowIfCancellationRequested();
            using var stepScope = torch.NewDisposeScope();
            var logits = recompute?.Applies(t + 1) == true
                ? recompute.Run(runner, device, Fed(t + 1))
                : runner.Forward(new ForwardBatch
                {
                    InputIds = ids.narrow(1, t, 1),
                    Positions = torch.full(new long[] { batch, 1 }, (long)t, ScalarType.Int64, device),
                    RealTokens = ones,
                    MaxPosition = t,
                    LastPositionOnly = true,
                });
            Record(t - prefix + 1, logits);
            if (options.Progress is { } progress && (t % 256 == 0 || t == length - 2)) progress.Report((t - prefix + 1.0) / Math.Max(1, targets - 1));
        }

        var hostLogProbs = logProbs.cpu().data<float>().ToArray();
        var hostArgmax = argmax.cpu().data<long>().ToArray();
        var lp = new float[batch][];
        var am = new int[batch][];
        for (int b = 0; b < batch; b++)
        {
            int scored = sequences[b].Count - prefix;
            lp[b] = Enumerable.Range(0, targets).Select(j => j < scored ? hostLogProbs[b * targets + j] : float.NaN).ToArray();
            am[b] = Enumerable.Range(0, targets).Select(j => j < scored ? (int)hostArgmax[b * targets + j] : -1).ToArray();
        }
        return new TeacherForcingResult(lp, am, prefix);
    }
}
