using Tern.Evaluation;
using Tern.Caching;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Tests.Evaluation;

public sealed class PolicyEvaluationTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static CausalLanguageModel Load(string name = "llama-gqa") => CausalLanguageModel.Load(Fixtures.ModelDir(name), new ModelLoadOptions { Device = DeviceKind.Cpu });

    static int[] Tokens(int n, int vocab, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => random.Next(4, vocab)).ToArray();
    }

    /// <summary>log p of every token after the first from one full forward pass: the independent reference.</summary>
    static float[] OnePass(CausalLanguageModel model, int[] sequence)
    {
        using var scope = torch.NewDisposeScope();
        var logits = HfParityContract.FullLogits(model, new[] { sequence.Select(x => (long)x).ToArray() })[0]; // [T,V]
        var targets = torch.tensor(sequence.Skip(1).Select(x => (long)x).ToArray()).unsqueeze(1);
        return F.log_softmax(logits.narrow(0, 0, sequence.Length - 1), -1).gather(1, targets).squeeze(1).data<float>().ToArray();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    public void TeacherForcingWithTheFullCacheGivesTheOnePassLogProbabilities(int prefix)
    {
        using var model = Load();
        var sequences = new[] { Tokens(40, model.Info.VocabSize, 1), Tokens(33, model.Info.VocabSize, 2) };
        var result = TeacherForcing.Score(model, sequences, new TeacherForcingOptions { PrefixLength = prefix }, cancellation: Ct);
        for (int b = 0; b < sequences.Length; b++)
        {
            var expected = OnePass(model, sequences[b]).Skip(prefix - 1).ToArray();
            var got = result.LogProbs[b];
            Assert.Equal(40 - prefix, got.Length);
            for (int j = 0; j < got.Length; j++)
            {
                if (j < expected.Length) Assert.True(Math.Abs(got[j] - expected[j]) < 1e-4, $"seq {b} target {prefix + j}: {got[j]} vs {expected[j]}");
                else { Assert.True(float.IsNaN(got[j])); Assert.Equal(-1, result.Argmax[b][j]); } // the shorter sequence's padding
            }
        }
    }

    [Theory]
    [InlineData("sink")]
    [InlineData("h2o")]
    [InlineData("window")]
    [InlineData("window-recompute")]
    public void PoliciesWhoseBudgetCoversTheTextMatchTheFullCache(string name)
    {
        using var model = Load();
        var tokens = Tokens(60, model.Info.VocabSize, 3);
        var options = new StreamingEvaluationOptions { Streams = 2, BucketSize = 8 };
        var dense = StreamingEvaluation.Run(model, tokens, new KvPolicyOptions(), options, cancellation: Ct);
        var policy = new KvPolicyOptions { Policy = name, Budget = KvBudget.OfTokens(30) };
        var covered = StreamingEvaluation.Run(model, tokens, policy, options, cancellation: Ct);
        Assert.Equal(dense.BucketTokens, covered.BucketTokens);
        Assert.Equal(29, dense.BucketTokens.Sum() / 2); // every target after the first token of each stream, once
        for (int k = 0; k < dense.BucketNll.Length; k++) Assert.True(Math.Abs(dense.BucketNll[k] - covered.BucketNll[k]) < 1e-4, $"bucket {k}");

        var sequences = BudgetEvaluation.Sequences(tokens, 2, 30);
        var reference = BudgetEvaluation.Reference(model, sequences, cancellation: Ct);
        var point = BudgetEvaluation.Run(model, sequences, reference, new KvPolicyOptions { Policy = name, Budget = KvBudget.OfRatio(1) }, name, 1, cancellation: Ct);
        Assert.Equal(1.0, point.Agreement);
        Assert.Equal(58, point.Tokens);
    }

    [Fact]
    public void APrefillLongerThanOneProbabilityBlockGivesTheDenseScores()
    {
        using var model = Load();
        var sequences = new[] { Tokens(310, model.Info.VocabSize, 6), Tokens(310, model.Info.VocabSize, 7) };
        var options = new TeacherForcingOptions { PrefixLength = 300 }; // 300 queries: two blocks of the explicit path
        var dense = TeacherForcing.Score(model, sequences, options, cancellation: Ct);
        var h2o = TeacherForcing.Score(model, sequences, options with { Cache = new KvCacheConfig(new HeavyHitterPolicy(KvBudget.OfTokens(310))) }, cancellation: Ct);
        var tight = TeacherForcing.Score(model, sequences, options with { Cache = new KvCacheConfig(new HeavyHitterPolicy(KvBudget.OfTokens(100))) }, cancellation: Ct);
        for (int b = 0; b < 2; b++)
            for (int j = 0; j < 10; j++) Assert.True(Math.Abs(dense.LogProbs[b][j] - h2o.LogProbs[b][j]) < 1e-4, $"seq {b} target {300 + j}");
        Assert.NotEqual(dense.LogProbs[0][5], tight.LogProbs[0][5]); // and the prefill's scores did evict
    }

    [Fact]
    public void ATightBudgetChangesTheScoresAndStreamsAreBucketedByPosition()
    {
        using var model = Load();
        var tokens = Tokens(90, model.Info.VocabSize, 4);
        var options = new StreamingEvaluationOptions { Streams = 3, BucketSize = 10 };
        var dense = StreamingEvaluation.Run(model, tokens, new KvPolicyOptions(), options, cancellation: Ct);
        var window = StreamingEvaluation.Run(model, tokens, new KvPolicyOptions { Policy = "window", Budget = KvBudget.OfTokens(6) }, options, cancellation: Ct);
        Assert.Equal(new long[] { 27, 30, 30 }, dense.BucketTokens); // positions 1..9, 10..19, 20..29 of 3 streams
        Assert.True(Math.Abs(dense.BucketNll[0] - window.BucketNll[0]) > 0 || Math.Abs(dense.BucketNll[1] - window.BucketNll[1]) > 1e-3);
        Assert.Equal(dense.BucketNll[0], window.BucketNll[0], 0.5); // same text, same model: close at the start
    }

    [Fact]
    public void AttentionSinkSharesAreProbabilityMassOverTheRightQueries()
    {
        using var model = Load();
        var sequences = new[] { Tokens(300, model.Info.VocabSize, 8), Tokens(300, model.Info.VocabSize, 9) };
        // The last query (in the second block of 256) over every key: its probabilities sum to one in every layer.
        var all = AttentionSinks.Measure(model, sequences, firstTokens: 300, fromQuery: 299);
        Assert.All(all.Share, share => Assert.Equal(1.0, share, 5));
        var one = AttentionSinks.Measure(model, sequences, firstTokens: 1, fromQuery: 64);
        var four = AttentionSinks.Measure(model, sequences, firstTokens: 4, fromQuery: 64);
        for (int i = 0; i < one.Share.Length; i++) Assert.True(one.Share[i] > 0 && one.Share[i] <= four.Share[i] && four.Share[i] < 1, $"layer {i}");
        Assert.Equal(Enumerable.Range(64, 236).Average(q => 1.0 / (q + 1)), one.UniformShare, 12);
    }

    [Fact]
    public void AStartTokenBeginsEachStreamAndIsNeverScored()
    {
        using var model = Load();
        var tokens = Tokens(40, model.Info.VocabSize, 6);
        var options = new StreamingEvaluationOptions { Streams = 2, BucketSize = 5, StartToken = 3 };
        var withStart = StreamingEvaluation.Run(model, tokens, new KvPolicyOptions(), options, cancellation: Ct);
        // The same streams written out by hand: [3] + the first 19 tokens of each half.
        var byHand = new[] { 0, 20 }.SelectMany(o => tokens.Skip(o).Take(19).Prepend(3)).ToArray();
        var expected = StreamingEvaluation.Run(model, byHand, new KvPolicyOptions(), options with { StartToken = null }, cancellation: Ct);
        Assert.Equal(expected.MeanNll, withStart.MeanNll, 12);
        Assert.Equal(2 * 19, withStart.BucketTokens.Sum());
        Assert.Contains("outside the model's vocabulary", Assert.Throws<ArgumentException>(() =>
            StreamingEvaluation.Run(model, tokens, new KvPolicyOptions(), options with { StartToken = model.Info.VocabSize }, cancellation: Ct)).Message);
    }

    [Fact]
    public void TextsTooShortForTheRequestAreRefused()
    {
        using var model = Load();
        var tokens = Tokens(20, model.Info.VocabSize, 5);
        Assert.Contains("too few", Assert.Throws<ArgumentException>(() => StreamingEvaluation.Run(model, tokens, new KvPolicyOptions(), new StreamingEvaluationOptions { Streams = 4, TokensPerStream = 10 }, cancellation: Ct)).Message);
        Assert.Contains("too few", Assert.Throws<ArgumentException>(() => BudgetEvaluation.Sequences(tokens, 3, 10)).Message);
        Assert.Contains("prefix", Assert.Throws<ArgumentException>(() => TeacherForcing.Score(model, new[] { tokens }, new TeacherForcingOptions { PrefixLength = 20 }, cancellation: Ct)).Message);
    }
}
