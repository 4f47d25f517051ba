using Tern.Checkpoints;
using Tern.Evaluation;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Tests.Evaluation;

public sealed class PerplexityTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static CausalLanguageModel Load() => CausalLanguageModel.Load(Fixtures.ModelDir("llama-gqa"), new ModelLoadOptions { Device = DeviceKind.Cpu });

    static int[] Tokens(int n, int vocab, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => random.Next(4, vocab)).ToArray();
    }

    [Theory]
    [InlineData(50, 16, 8)]
    [InlineData(50, 16, 15)]
    [InlineData(50, 16, 1)]
    [InlineData(37, 64, 32)]
    [InlineData(2, 8, 4)]
    public void EveryTokenButTheFirstIsScoredExactlyOnce(int n, int window, int stride)
    {
        using var model = Load();
        var result = Perplexity.Evaluate(model, Tokens(n, model.Info.VocabSize, n), new PerplexityOptions { Window = window, Stride = stride }, cancellation: Ct);
        Assert.Equal(n - 1, result.ScoredTokens);
    }

    /// <summary>One window over the whole text gives the mean NLL of transformers' own logits for it.</summary>
    [Fact]
    public void OneWindowMatchesTransformersLogits()
    {
        using var model = Load();
        using var reference = SafetensorsFile.Open(Path.Combine(Fixtures.ModelDir("llama-gqa"), "reference.safetensors"));
        var ids = reference.Load("greedy_1").data<long>().Select(x => (int)x).ToArray(); // a 22-token sequence
        using var logits = reference.Load("logits_1");                                       // HF logits of its first 12 tokens
        int t = (int)logits.shape[0];
        var prefix = ids.Take(t).ToArray();
        using var logProbs = F.log_softmax(logits.narrow(0, 0, t - 1), -1);
        using var targets = torch.tensor(prefix.Skip(1).Select(x => (long)x).ToArray()).unsqueeze(1);
        double hfNll = -logProbs.gather(1, targets).sum().item<float>();
        var result = Perplexity.Evaluate(model, prefix, new PerplexityOptions { Window = 64 }, cancellation: Ct);
        Assert.Equal(t - 1, result.ScoredTokens);
        Assert.True(Math.Abs(result.NegativeLogLikelihood - hfNll) < 1e-3, $"{result.NegativeLogLikelihood} vs {hfNll}");
    }

    /// <summary>A slow, obviously correct reference: each token scored with exactly the context its window gives it.</summary>
    [Fact]
    public void SlidingWindowsScoreEachTokenWithItsWindowsContext()
    {
        using var model = Load();
        var tokens = Tokens(30, model.Info.VocabSize, 7);
        const int window = 8, stride = 3;
        var result = Perplexity.Evaluate(model, tokens, new PerplexityOptions { Window = window, Stride = stride }, cancellation: Ct);

        double expected = 0;
        int scoredUpTo = 1;
        for (int begin = 0; scoredUpTo < tokens.Length; begin += stride)
        {
            int end = Math.Min(begin + window, tokens.Length);
            for (int target = Math.Max(scoredUpTo, begin + 1); target < end; target++)
            {
                var context = tokens[begin..target];
                using var logits = HfParityContract.FullLogits(model, new[] { context.Select(x => (long)x).ToArray() });
                using var lp = F.log_softmax(logits[0][-1], -1);
                expected -= lp[tokens[target]].item<float>();
            }
            scoredUpTo = end;
            if (end == tokens.Length) break;
        }
        Assert.Equal(tokens.Length - 1, result.ScoredTokens);
        Assert.True(Math.Abs(result.NegativeLogLikelihood - expected) < 1e-3, $"{result.NegativeLogLikelihood} vs {expected}");
    }

    [Theory]
    [InlineData(1, 0)]
    [InlineData(65, 0)]
    [InlineData(16, 17)]
    [InlineData(16, 16)]
    public void ImpossibleWindowsAreRefused(int window, int stride)
    {
        using var model = Load();
        Assert.Throws<OptionException>(() => Perplexity.Evaluate(model, Tokens(20, 320, 1), new PerplexityOptions { Window = window, Stride = stride }, cancellation: Ct));
    }
}
