using Tern.Evaluation;
using Tern.Generation;
using Tern.Models;
using Tern.Prompting;
using Tern.Runtime;
using Tern.Tests.Training;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Tests.Prompting;

public sealed class SoftPromptTests
{
    static int[] Tokens(int count, int vocab, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => random.Next(vocab)).ToArray();
    }

    /// <summary>Σ −ln p over tokens [from, to) of <paramref name="ids"/> from one plain forward pass.</summary>
    static double PlainNll(CausalLanguageModel model, int[] ids, int from, int to)
    {
        using var scope = torch.NewDisposeScope();
        using var cache = model.CreateCache(1, ids.Length, maxStepTokens: ids.Length);
        var logits = model.Forward(ForwardBatch.LeftPadded(new[] { ids }, model.Device), cache)[0];
        var logProbs = F.log_softmax(logits.to(ScalarType.Float64), -1);
        double nll = 0;
        for (int t = from; t < to; t++) nll -= logProbs[t - 1, ids[t]].item<double>();
        return nll;
    }

    /// <summary>§3.7: with P = the embeddings of a real text prefix, the prompted NLL of the text equals the plain model's NLL
    /// of prefix + text restricted to the same tokens — RoPE (Llama) and learned positions (OPT: the prompt takes positions
    /// 0..n−1). The evaluator scores the same tokens as without the prompt (tokens 2..T of the window).</summary>
    [Theory]
    [InlineData("llama-gqa")]
    [InlineData("opt-prenorm")]
    [InlineData("gpt2")]
    public void PromptOfRealTokenEmbeddingsEqualsThosePlainTokens(string fixture)
    {
        using var model = HfParityContract.LoadFixture(fixture);
        using var scope = torch.NewDisposeScope();
        int n = 5, w = 12;
        var all = Tokens(n + w, model.Info.VocabSize, 3);
        var prefixIds = torch.tensor(all.Take(n).Select(x => (long)x).ToArray());
        using var prompt = SoftPrompt.FromTensor(model.EmbeddingRows(model.Info.VocabSize).index_select(0, prefixIds));
        var text = all.Skip(n).ToArray();
        var prompted = Perplexity.Evaluate(model, text, new PerplexityOptions { Window = w, Stride = w - 1 }, prompt, cancellation: TestContext.Current.CancellationToken);
        var plain = Perplexity.Evaluate(model, text, new PerplexityOptions { Window = w, Stride = w - 1 }, cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(plain.ScoredTokens, prompted.ScoredTokens);
        Assert.Equal(w - 1, prompted.ScoredTokens);
        double expected = PlainNll(model, all, n + 1, n + w); // the first text token is not scored, with or without the prompt
        Assert.Equal(expected, prompted.NegativeLogLikelihood, 1e-3);
        Assert.True(Math.Abs(expected - prompted.NegativeLogLikelihood) < 1e-5 * expected);
        // The released formula divides by n + T − 1 positions: lower by (T − 1) / (n + T − 1) exactly.
        Assert.Equal(prompted.MeanNll * (w - 1) / (n + w - 1), prompted.ReleasedMeanNll, 10);
        Assert.Equal(plain.MeanNll, plain.ReleasedMeanNll, 10);
    }

    [Fact]
    public void EmptyPromptChangesNothing()
    {
        using var model = HfParityContract.LoadFixture("llama-gqa");
        using var empty = SoftPrompt.FromVocabulary(model, 0);
        var text = Tokens(70, model.Info.VocabSize, 5);
        var options = new PerplexityOptions { Window = 16, Stride = 8 };
        var plain = Perplexity.Evaluate(model, text, options, cancellation: TestContext.Current.CancellationToken); // what 'tern eval ppl' runs
        var prompted = Perplexity.Evaluate(model, text, options, empty, cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(plain.NegativeLogLikelihood, prompted.NegativeLogLikelihood);
        Assert.Equal(plain.ScoredTokens, prompted.ScoredTokens);

        using var prefixed = PromptedModel.Create(model, empty);
        var generation = new GenerationOptions { MaxNewTokens = 6, IgnoreEos = true };
        var prompts = new[] { (IReadOnlyList<int>)text.Take(7).ToArray(), text.Skip(20).Take(3).ToArray() };
        var a = new Tern.Generation.Generator(model).GenerateTokens(prompts, generation, TestContext.Current.CancellationToken);
        var b = new Tern.Generation.Generator(prefixed).GenerateTokens(prompts, generation, TestContext.Current.CancellationToken);
        Assert.Equal(a.Sequences.Select(s => s.Tokens), b.Sequences.Select(s => s.Tokens));
    }

    /// <summary>The prompt's keys and values, prefilled once, serve every request: greedy generation through
    /// <see cref="PromptedModel"/> equals a loop that re-runs prompt + text from scratch at every token, for a batch of
    /// prompts of different lengths (left padding after the prompt's entries).</summary>
    [Theory]
    [InlineData("llama-gqa")]
    [InlineData("opt-prenorm")]
    public void PrefilledPromptGeneratesAsRecomputingItEveryToken(string fixture)
    {
        using var model = HfParityContract.LoadFixture(fixture);
        using var scope = torch.NewDisposeScope();
        var gen = new torch.Generator(9);
        using var prompt = SoftPrompt.FromTensor(torch.randn(new long[] { 4, model.TokenEmbeddingWidth }, generator: gen));
        using var prefixed = PromptedModel.Create(model, prompt);
        var texts = new[] { Tokens(6, model.Info.VocabSize, 1), Tokens(3, model.Info.VocabSize, 2) };
        var result = new Tern.Generation.Generator(prefixed).GenerateTokens(texts, new GenerationOptions { MaxNewTokens = 5, IgnoreEos = true }, TestContext.Current.CancellationToken);
        for (int s = 0; s < texts.Length; s++)
        {
            var ids = texts[s].ToList();
            for (int step = 0; step < 5; step++)
            {
                var all = Enumerable.Repeat(0, 4).Concat(ids).ToArray();
                using var cache = model.CreateCache(1, all.Length, maxStepTokens: all.Length);
                var plain = ForwardBatch.LeftPadded(new[] { all }, model.Device, lastPositionOnly: true);
                var batch = new ForwardBatch
                {
                    InputIds = plain.InputIds, Positions = plain.Positions, RealTokens = plain.RealTokens, MaxPosition = plain.MaxPosition,
                    LastPositionOnly = true, PrefixEmbeddings = prompt.Embeddings,
                };
                ids.Add((int)model.Forward(batch, cache)[0].argmax().item<long>());
            }
            Assert.Equal(ids.Skip(texts[s].Length), result.Sequences[s].Tokens);
        }
        Assert.Equal(model.Info.MaxPositions - 4, prefixed.Info.MaxPositions);
    }

    /// <summary>Under a KV policy the prompt's entries are what the policy keeps of the prompt prefilled as a first chunk: with
    /// P = the embeddings of real tokens, generation through <see cref="PromptedModel"/> equals the plain model's over those
    /// tokens + the text, prefilled in chunks of n (the prompt's, then the text's), under the same policy.</summary>
    [Theory]
    [InlineData("sink", "10", 2, 1, 16)]
    [InlineData("sink", "10", 2, 4, 16)]
    [InlineData("sink", "5", 1, 1, 16)] // the prompt's own prefill evicts some of it
    [InlineData("window", "8", null, 1, 16)]
    [InlineData("h2o", "10", null, 1, 16)]
    [InlineData("h2o", "0.5", null, 3, 16)]
    [InlineData("full", null, null, 1, 8)]
    public void UnderAPolicyThePromptIsAFirstPrefillChunk(string policy, string? budget, int? sinks, int evictEvery, int bits)
    {
        using var model = HfParityContract.LoadFixture("llama-gqa");
        using var scope = torch.NewDisposeScope();
        int n = 6;
        var prefix = Tokens(n, model.Info.VocabSize, 4);
        using var prompt = SoftPrompt.FromTensor(model.EmbeddingRows(model.Info.VocabSize).index_select(0, torch.tensor(prefix.Select(x => (long)x).ToArray())));
        using var prompted = PromptedModel.Create(model, prompt);
        var cache = Tern.Caching.KvCachePolicies.Create(new Tern.Caching.KvPolicyOptions
        {
            Policy = policy, Budget = budget is null ? null : Tern.Caching.KvBudget.Parse(budget), Sinks = sinks, EvictEvery = evictEvery, Bits = bits,
        });
        var options = new GenerationOptions { MaxNewTokens = 24, IgnoreEos = true, Cache = cache };
        foreach (int length in new[] { 3, 6 })
        {
            var text = Tokens(length, model.Info.VocabSize, 10 + length);
            var withPrompt = new Tern.Generation.Generator(prompted).GenerateTokens(new[] { text }, options, TestContext.Current.CancellationToken);
            var plain = new Tern.Generation.Generator(model).GenerateTokens(new[] { prefix.Concat(text).ToArray() }, options with { PrefillChunk = n },
                TestContext.Current.CancellationToken);
            Assert.Equal(plain.Sequences[0].Tokens, withPrompt.Sequences[0].Tokens);
        }
    }

    [Fact]
    public void TrainingLeavesTheModelBitIdenticalAndLowersValidationLoss()
    {
        using var dir = new TempDir();
        using var model = CausalLanguageModel.CreateRandom(TrainerTests.TinyConfig(initRange: 0.2), torch.CPU, ModelDType.Float32, seed: 3);
        var before = model.StateDict().Select(t => (t.Name, Tensor: t.Tensor.clone())).ToArray();
        var train = TrainerTests.Stream(3000, 1);
        var valid = TrainerTests.Stream(400, 2);
        var options = new SoftPromptTrainingOptions
        {
            Tokens = 4, Steps = 25, WarmupSteps = 3, LearningRate = 3e-2, BatchSize = 2, SequenceLength = 16, EvalEvery = 5, EvalTokens = 200,
        };
        using var initial = SoftPrompt.FromVocabulary(model, 4);
        double start = Perplexity.Evaluate(model, valid.Take(200).ToArray(), new PerplexityOptions { Window = 16, Stride = 15 }, initial, cancellation: TestContext.Current.CancellationToken).MeanNll;
        var result = SoftPromptTrainer.Train(model, train, valid, options, cancellation: TestContext.Current.CancellationToken);
        using var trained = result.Prompt;
        Assert.True(result.BestValidNll < start - 0.05, $"validation NLL {result.BestValidNll:F4} did not drop below the initial prompt's {start:F4}");
        foreach (var (name, tensor) in model.StateDict())
            Assert.True(tensor.allclose(before.Single(b => b.Name == name).Tensor, 0, 0), $"{name} changed");
        Assert.Equal(ScalarType.Float32, trained.Embeddings.dtype);
        Assert.Equal(new long[] { 4, 32 }, trained.Embeddings.shape);

        // Round trip through the file, and a clear refusal for a model of another width.
        string path = dir.File("prompt.safetensors");
        trained.Save(path);
        using var loaded = SoftPrompt.Load(path, model);
        Assert.True(loaded.Embeddings.allclose(trained.Embeddings, 0, 0));
        Assert.Equal("25", loaded.Metadata["steps"]);
        using var other = HfParityContract.LoadFixture("llama-gqa");
        if (other.TokenEmbeddingWidth != 32)
            Assert.Contains("wide", Assert.Throws<OptionException>(() => SoftPrompt.Load(path, other)).Message);
    }
}
