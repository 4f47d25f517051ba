using Tern.Caching;
using Tern.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Evaluation;

/// <summary>Per layer, the attention the first tokens of a sequence receive.</summary>
/// <param name="Share">Mean attention probability (over heads, sequences and queries) on the first tokens, per layer.</param>
/// <param name="UniformShare">What uniform attention over the visible keys would give them: the reference for "a sink".</param>
public sealed record AttentionSinkReport(int FirstTokens, int FromQuery, double[] Share, double UniformShare);

/// <summary>
/// StreamingLLM's observation (Xiao et al. 2023, §3.1, fig. 2): trained LMs put a large share of attention on the first tokens
/// whatever they say ("attention sinks"), which is why evicting them breaks window attention. This measures that share on a
/// model, from one dense prefill per batch with the probabilities the explicit attention path hands to a policy.
/// </summary>
public static class AttentionSinks
{
    /// <summary>Mean attention on the first <paramref name="firstTokens"/> positions from queries at positions ≥
    /// <paramref name="fromQuery"/>, per layer, over equal-length <paramref name="sequences"/>.</summary>
    public static AttentionSinkReport Measure(CausalLanguageModel model, IReadOnlyList<IReadOnlyList<int>> sequences, int firstTokens = 1, int fromQuery = 64)
    {
        int length = sequences[0].Count;
        if (sequences.Any(s => s.Count != length)) throw new ArgumentException("the sequences must have equal lengths.");
        if (firstTokens < 1 || firstTokens > fromQuery + 1 || fromQuery >= length)
            throw new ArgumentException($"need 1 ≤ first tokens ({firstTokens}) ≤ from-query ({fromQuery}) + 1 and from-query < length ({length}).");
        var probe = new Probe(model.Info.Layers, firstTokens, fromQuery);
        using (var cache = model.CreateCache(sequences.Count, length, new KvCacheConfig(probe), maxStepTokens: length))
        using (var scope = torch.NewDisposeScope())
            model.Forward(ForwardBatch.LeftPadded(sequences, model.Device, lastPositionOnly: true), cache);
        // Uniform attention gives the first k keys k / (q + 1) at query position q.
        double uniform = Enumerable.Range(fromQuery, length - fromQuery).Average(q => (double)firstTokens / (q + 1));
        return new AttentionSinkReport(firstTokens, fromQuery, probe.Sums.Select((s, i) => s / probe.Counts[i]).ToArray(), uniform);
    }

    /// <summary>The full cache, asking for probabilities and summing the share of the first keys per layer.</summary>
    sealed class Probe(int layers, int firstTokens, int fromQuery) : IKvCachePolicy, IAttentionObserver
    {
        public double[] Sums { get; } = new double[layers];
        public long[] Counts { get; } = new long[layers];
        public string Name => "attention-probe";
        public bool AppendOnly => false;
        public int Capacity(int maxSequenceLength, int maxStepTokens) => maxSequenceLength;
        public void BeforeAppend(LayerKvCache layer, int incomingTokens) { }
        public void AfterStep(LayerKvCache layer) { }

        readonly int[] queriesSeen = new int[layers]; // probabilities come in blocks of consecutive queries

        public void ObserveAttention(LayerKvCache layer, Tensor probabilities)
        {
            long b = probabilities.size(0), h = probabilities.size(1), t = probabilities.size(2);
            int start = queriesSeen[layer.Layer], skip = Math.Max(0, fromQuery - start);
            queriesSeen[layer.Layer] += (int)t;
            if (skip >= t) return;
            using var scope = torch.NewDisposeScope();
            Sums[layer.Layer] += probabilities.narrow(2, skip, t - skip).narrow(3, 0, firstTokens).sum().to(ScalarType.Float64).item<double>();
            Counts[layer.Layer] += b * h * (t - skip);
        }
    }
}
