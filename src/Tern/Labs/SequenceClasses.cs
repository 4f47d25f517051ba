using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Labs;

/// <summary>Shape of Scan &amp; Snap's synthetic data (paper §5 / the official <c>Dataset2</c>); defaults are the Fig. 4 run.</summary>
public sealed record SequenceClassOptions
{
    /// <summary>Distinct query ("last") tokens.</summary>
    public int NumLast { get; init; } = 2;
    /// <summary>Next tokens (labels) per query token: facts = NumLast · NextPerLast.</summary>
    public int NextPerLast { get; init; } = 1;
    /// <summary>Common tokens, shared by every fact.</summary>
    public int NumCommon { get; init; } = 10;
    /// <summary>Distinct tokens of each fact.</summary>
    public int DistinctPerNext { get; init; } = 10;
    /// <summary>Unnormalised probability of each common token.</summary>
    public double CommonWeight { get; init; } = 1;
    /// <summary>Unnormalised probabilities of a fact's distinct tokens: linspace(min, max).</summary>
    public double DistinctWeightMin { get; init; } = 0.1;
    /// <summary>See <see cref="DistinctWeightMin"/>.</summary>
    public double DistinctWeightMax { get; init; } = 1.0;
    /// <summary>Sequence length T: T−1 context tokens, then the query token.</summary>
    public int Length { get; init; } = 128;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        if (NumLast < 1) throw new ArgumentException($"{nameof(NumLast)} must be at least 1 (got {NumLast}).");
        if (NextPerLast < 1) throw new ArgumentException($"{nameof(NextPerLast)} must be at least 1 (got {NextPerLast}).");
        if (NumCommon < 0) throw new ArgumentException($"{nameof(NumCommon)} must not be negative (got {NumCommon}).");
        if (DistinctPerNext < 1) throw new ArgumentException($"{nameof(DistinctPerNext)} must be at least 1 (got {DistinctPerNext}).");
        if (Length < 2) throw new ArgumentException($"{nameof(Length)} must be at least 2: context tokens, then the query (got {Length}).");
        if (!(CommonWeight >= 0) || !(DistinctWeightMin > 0) || !(DistinctWeightMax >= DistinctWeightMin))
            throw new ArgumentException("token weights must satisfy common ≥ 0 and 0 < distinct min ≤ distinct max.");
    }
}

/// <summary>One sequence class: a query token m whose next token is n, with the contextual distribution P(l | m, n) over
/// its tokens (the common ones first, then its distinct ones, in increasing probability).</summary>
public sealed record SequenceFact(int Query, int Next, int[] Tokens, float[] Probabilities, int CommonCount);

/// <summary>A batch: context tokens [B, T−1] (ids), and the query token and label of each sequence.</summary>
public sealed record SequenceBatch(int[][] Context, int[] Query, int[] Label);

/// <summary>
/// Scan &amp; Snap's sequence classes. Token ids: [common][distinct blocks, one per fact][query tokens][next tokens], so the
/// vocabulary is M = common + distinct·facts + NumLast + facts. A sample picks a fact uniformly, draws T−1 context tokens
/// i.i.d. from P(·|m,n), appends m and is labelled n.
/// </summary>
/// <remarks>Draws follow the official script exactly: the fact by Python's <c>random.choice</c> (<see cref="PythonRandom"/>),
/// the context by libtorch's <c>multinomial</c> (with replacement, float32 probabilities) on a CPU generator, which TorchSharp
/// shares with PyTorch.</remarks>
public sealed class SequenceClasses
{
    SequenceClasses(SequenceClassOptions options, IReadOnlyList<SequenceFact> facts, int vocabulary)
    {
        Options = options;
        Facts = facts;
        Vocabulary = vocabulary;
    }

    /// <summary>The shape.</summary>
    public SequenceClassOptions Options { get; }
    /// <summary>The facts, in the official order (by query token, then by next token).</summary>
    public IReadOnlyList<SequenceFact> Facts { get; }
    /// <summary>Vocabulary size M.</summary>
    public int Vocabulary { get; }

    /// <summary>The facts of <paramref name="options"/>.</summary>
    public static SequenceClasses Create(SequenceClassOptions options)
    {
        options.Validate();
        int facts = options.NumLast * options.NextPerLast;
        int distinctOffset = options.NumCommon;
        int queryOffset = distinctOffset + options.DistinctPerNext * facts;
        int nextOffset = queryOffset + options.NumLast;
        // float32 arithmetic as torch does it (linspace, then division by the sum), so multinomial sees the same numbers.
        using var scope = torch.NewDisposeScope();
        var distinctWeights = torch.linspace(options.DistinctWeightMin, options.DistinctWeightMax, options.DistinctPerNext, ScalarType.Float32);
        var weights = torch.cat(new[] { torch.full(options.NumCommon, options.CommonWeight, ScalarType.Float32), distinctWeights });
        float[] probabilities = (weights / weights.sum()).data<float>().ToArray();
        var list = new List<SequenceFact>();
        for (int m = 0; m < options.NumLast; m++)
            for (int j = 0; j < options.NextPerLast; j++)
            {
                int fact = list.Count;
                int[] tokens = Enumerable.Range(0, options.NumCommon)
                    .Concat(Enumerable.Range(distinctOffset + options.DistinctPerNext * fact, options.DistinctPerNext)).ToArray();
                list.Add(new SequenceFact(queryOffset + m, nextOffset + fact, tokens, probabilities, options.NumCommon));
            }
        return new SequenceClasses(options, list, nextOffset + facts);
    }

    /// <summary>Draws a batch of <paramref name="batchSize"/> sequences; advances both generators.</summary>
    public SequenceBatch Generate(int batchSize, PythonRandom random, Generator generator)
    {
        int context = Options.Length - 1;
        var tokens = new int[batchSize][];
        var query = new int[batchSize];
        var label = new int[batchSize];
        using var scope = torch.NewDisposeScope();
        var probabilities = Facts.Select(f => torch.tensor(f.Probabilities)).ToArray();
        for (int b = 0; b < batchSize; b++)
        {
            int fact = random.Below(Facts.Count);
            var f = Facts[fact];
            long[] drawn = torch.multinomial(probabilities[fact], context, replacement: true, generator: generator).data<long>().ToArray();
            tokens[b] = drawn.Select(i => f.Tokens[i]).ToArray();
            query[b] = f.Query;
            label[b] = f.Next;
        }
        return new SequenceBatch(tokens, query, label);
    }
}
