using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Generation;
using Tern.Models;
using Tern.Runtime;
using Tern.Tokenization;
using TorchSharp;
using TernGenerator = Tern.Generation.Generator;
using ScalarType = TorchSharp.torch.ScalarType;

namespace Tern.Tests.Generation;

/// <summary>
/// The generation loop on the llama-gqa fixture (vocabulary 320, 64 positions, a byte-level BPE tokenizer): decoding
/// strategies, stopping rules, streaming, cancellation and input validation. Expected greedy tokens come from
/// transformers (reference.safetensors).
/// </summary>
public sealed class GeneratorTests : IDisposable
{
    readonly CausalLanguageModel model = HfParityContract.LoadFixture("llama-gqa");
    readonly HfParityContract.Reference reference = HfParityContract.Reference.Load(Fixtures.ModelDir("llama-gqa"));

    public void Dispose()
    {
        reference.Dispose();
        model.Dispose();
    }

    /// <summary>The three reference prompts (7, 12 and 3 tokens).</summary>
    IReadOnlyList<int>[] Prompts => reference.Prompts.Select(p => (IReadOnlyList<int>)p.Select(x => (int)x).ToArray()).ToArray();

    /// <summary>Greedy, no stop token: always runs to the limit.</summary>
    static GenerationOptions Greedy(int maxNew = 10) => new() { MaxNewTokens = maxNew, StopTokenIds = Array.Empty<int>() };

    static int[][] Tokens(GenerationResult result) => result.Sequences.Select(s => s.Tokens.ToArray()).ToArray();

    int[][] ReferenceGreedy => reference.PaddedGreedy.Select(g => g.Select(x => (int)x).ToArray()).ToArray();

    static TernTokenizer Tokenizer() => TernTokenizer.Load(Fixtures.ModelDir("llama-gqa"));

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    // ---------------------------------------------------------------- decoding strategies

    [Fact]
    public void GreedyIsDeterministicAndMatchesTransformers()
    {
        var generator = new TernGenerator(model);
        var first = generator.GenerateTokens(Prompts, Greedy(), Ct);
        var second = generator.GenerateTokens(Prompts, Greedy(), Ct);
        Assert.Equal(ReferenceGreedy, Tokens(first));
        Assert.Equal(Tokens(first), Tokens(second));
        Assert.All(first.Sequences, s => Assert.Equal(FinishReason.Length, s.FinishReason));
        Assert.All(first.Sequences, s => Assert.Null(s.Text));
        for (int i = 0; i < 3; i++) Assert.Equal(Prompts[i], first.Sequences[i].PromptTokens);
    }

    [Fact]
    public void SeededSamplingIsReproducibleAndSeedsDiffer()
    {
        var generator = new TernGenerator(model);
        GenerationOptions Sampled(long seed) => Greedy(30) with { Temperature = 1.0, Seed = seed };
        var a = Tokens(generator.GenerateTokens(Prompts, Sampled(7), Ct));
        var b = Tokens(generator.GenerateTokens(Prompts, Sampled(7), Ct));
        var c = Tokens(generator.GenerateTokens(Prompts, Sampled(8), Ct));
        var high = Tokens(generator.GenerateTokens(Prompts, Sampled(7 + (1L << 32)), Ct)); // issue 18: only the low 32 bits counted
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        Assert.NotEqual(a, high);
        Assert.NotEqual(ReferenceGreedy, a.Select(x => x.Take(10).ToArray()).ToArray());
    }

    [Fact]
    public void TopKOfOneIsGreedy()
    {
        var generator = new TernGenerator(model);
        var sampled = generator.GenerateTokens(Prompts, Greedy() with { Temperature = 1.3, TopK = 1, Seed = 11 }, Ct);
        Assert.Equal(ReferenceGreedy, Tokens(sampled));
    }

    [Fact]
    public void TinyTopPIsGreedy()
    {
        var generator = new TernGenerator(model);
        var sampled = generator.GenerateTokens(Prompts, Greedy() with { Temperature = 2.0, TopP = 1e-6, Seed = 12 }, Ct);
        Assert.Equal(ReferenceGreedy, Tokens(sampled));
    }

    /// <summary>Degenerate settings never abort the draw (issue 18: "probability tensor contains either inf, nan or element
    /// &lt; 0"): a temperature of 1e-38 overflowed the best score to +inf; it now samples the arg-max, as the limit says. A
    /// penalty of 1e-38 overflows seen tokens' positive scores; they are clamped, and generation goes on.</summary>
    [Theory]
    [InlineData(1e-38)]
    [InlineData(double.Epsilon)]
    public void ATinyTemperatureIsGreedyAndATinyPenaltyDoesNotAbort(double tiny)
    {
        var generator = new TernGenerator(model);
        Assert.Equal(ReferenceGreedy, Tokens(generator.GenerateTokens(Prompts, Greedy() with { Temperature = tiny, Seed = 13 }, Ct)));
        var penalised = generator.GenerateTokens(Prompts, Greedy() with { Temperature = 1.0, RepetitionPenalty = tiny, Seed = 14 }, Ct);
        Assert.All(penalised.Sequences, s => Assert.All(s.Tokens, t => Assert.InRange(t, 0, model.Info.VocabSize - 1)));
        var greedyPenalised = generator.GenerateTokens(Prompts, Greedy() with { RepetitionPenalty = tiny }, Ct);
        Assert.All(greedyPenalised.Sequences, s => Assert.NotEmpty(s.Tokens));
    }

    [Fact]
    public void RepetitionPenaltyChangesTheOutput()
    {
        var generator = new TernGenerator(model);
        var plain = Tokens(generator.GenerateTokens(Prompts, Greedy(20) with { RepetitionPenalty = 1.0 }, Ct));
        var penalised = Tokens(generator.GenerateTokens(Prompts, Greedy(20) with { RepetitionPenalty = 1.5 }, Ct));
        Assert.Equal(ReferenceGreedy, plain.Select(x => x.Take(10).ToArray()).ToArray());
        Assert.NotEqual(plain[0], penalised[0]); // the greedy continuation of prompt 0 repeats token 217 five times
        // A strong penalty keeps a greedy sequence from repeating any token of its prompt or output for a while.
        var strong = Tokens(generator.GenerateTokens(Prompts, Greedy(8) with { RepetitionPenalty = 1e6 }, Ct));
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(strong[i].Length, strong[i].Distinct().Count());
            Assert.Empty(strong[i].Intersect(Prompts[i]));
        }
    }

    // ---------------------------------------------------------------- the sampler alone

    /// <summary>transformers' RepetitionPenaltyLogitsProcessor: a seen token's logit x becomes x / p when x &gt; 0, x · p
    /// otherwise; unseen tokens and padding are untouched. Checked by bracketing the penalised value with rival logits.</summary>
    [Theory]
    [InlineData(2.6, 1.3, 2.0)]    // 2.6 / 1.3
    [InlineData(-1.0, 1.3, -1.3)]  // negative: multiplied
    [InlineData(-1.0, 0.5, -0.5)]  // a penalty below 1 rewards
    [InlineData(0.9, 0.5, 1.8)]
    [InlineData(0.0, 2.0, 0.0)]
    public void RepetitionPenaltyFollowsTransformersFormula(double logit, double penalty, double expected)
    {
        // Vocabulary of 6: token 3 is in the prompt; token 0 is padding (not seen) with a high logit in row 2.
        using var ids = torch.tensor(new long[] { 0, 5, 3, 0, 5, 3, 0, 5, 3 }, new long[] { 3, 3 });
        using var mask = torch.tensor(new[] { true, true, true, true, true, true, false, true, true }, new long[] { 3, 3 });
        var options = new GenerationOptions { RepetitionPenalty = penalty };
        using var sampler = new Sampler(options, ids, mask, 6);
        const double eps = 1e-4;
        // Row 0: a rival (token 1) just below the expected value → token 3 wins. Row 1: a rival just above → the rival
        // wins. Row 2 (left-padded prompt) as row 0.
        float low = (float)(expected - eps), high = (float)(expected + eps), floor = -1e4f;
        var logits = torch.tensor(new[]
        {
            floor, low, floor, (float)logit, floor, floor,
            floor, high, floor, (float)logit, floor, floor,
            floor, low, floor, (float)logit, floor, floor,
        }, new long[] { 3, 6 });
        var next = sampler.Next(logits).data<long>().ToArray();
        Assert.Equal(new long[] { 3, 1, 3 }, next);
    }

    [Fact]
    public void RepetitionPenaltyIgnoresPaddingAndCountsGeneratedTokens()
    {
        // Token 0 pads row 1's prompt: it is not seen there, but it is in row 0's prompt.
        using var ids = torch.tensor(new long[] { 0, 4, 0, 4 }, new long[] { 2, 2 });
        using var mask = torch.tensor(new[] { true, true, false, true }, new long[] { 2, 2 });
        using var sampler = new Sampler(new GenerationOptions { RepetitionPenalty = 2.0 }, ids, mask, 5);
        var row = new[] { 3.0f, 0f, 2.0f, 0f, 0f }; // token 0 at 3 → 1.5 when seen, below token 2's 2.0
        using var logits = torch.tensor(row.Concat(row).ToArray(), new long[] { 2, 5 });
        Assert.Equal(new long[] { 2, 0 }, sampler.Next(logits).data<long>().ToArray());
        // Now token 2 (row 0) and token 0 (row 1) were generated: both are penalised from here on.
        // Row 0: token 0 → 1.5, token 2 → 1.0; row 1: token 0 → 1.5, token 2 still 2.0.
        Assert.Equal(new long[] { 0, 2 }, sampler.Next(logits).data<long>().ToArray());
    }

    [Fact]
    public void SamplingDrawsOnlyFromTheTopKAndTopPSets()
    {
        const int rows = 256;
        // Probabilities 0.05, 0.30, 0.15, 0.50 (token order): top-2 = {3, 1}; top-p 0.7 keeps {3, 1} as well (0.5 < 0.7).
        var probabilities = new[] { 0.05, 0.30, 0.15, 0.50 };
        var row = probabilities.Select(p => (float)Math.Log(p)).ToArray();
        using var logits = torch.tensor(Enumerable.Repeat(row, rows).SelectMany(r => r).ToArray(), new long[] { rows, 4 });
        using var ids = torch.zeros(rows, 1, ScalarType.Int64);
        using var mask = torch.ones(rows, 1, ScalarType.Bool);
        foreach (var options in new[]
                 {
                     new GenerationOptions { Temperature = 1, TopK = 2, Seed = 1 },
                     new GenerationOptions { Temperature = 1, TopP = 0.7, Seed = 2 },
                 })
        {
            using var sampler = new Sampler(options, ids, mask, 4);
            var drawn = sampler.Next(logits).data<long>().ToArray();
            Assert.All(drawn, t => Assert.Contains(t, new long[] { 1, 3 }));
            Assert.Contains(1L, drawn);
            Assert.Contains(3L, drawn);
        }
        // Without filtering all four appear.
        using var free = new Sampler(new GenerationOptions { Temperature = 1, Seed = 3 }, ids, mask, 4);
        Assert.Equal(4, free.Next(logits).data<long>().ToArray().Distinct().Count());
    }

    // ---------------------------------------------------------------- lengths and stopping

    [Fact]
    public void MaxNewTokensIsRespected()
    {
        var generator = new TernGenerator(model);
        var result = generator.GenerateTokens(Prompts, Greedy(5), Ct);
        Assert.All(result.Sequences, s => Assert.Equal(5, s.Tokens.Count));
        Assert.Equal(ReferenceGreedy.Select(g => g.Take(5).ToArray()), Tokens(result));
        Assert.Equal(15, result.Stats.GeneratedTokens);
        Assert.Equal(22, result.Stats.PromptTokens);
        Assert.Equal(4, result.Stats.DecodeSteps);
        Assert.Equal(3, result.Stats.BatchSize);

        var one = generator.GenerateTokens(Prompts, Greedy(1), Ct);
        Assert.All(one.Sequences, s => Assert.Single(s.Tokens));
    }

    [Theory]
    [InlineData(60, 4)]
    [InlineData(63, 1)]
    public void TheContextLimitsNewTokens(int promptLength, int expected)
    {
        var generator = new TernGenerator(model);
        var prompt = Enumerable.Range(0, promptLength).Select(i => 3 + i * 7 % 300).ToArray();
        var result = generator.GenerateTokens(new[] { prompt }, Greedy(100), Ct);
        Assert.Equal(expected, result.Sequences[0].Tokens.Count);
        Assert.Equal(FinishReason.Length, result.Sequences[0].FinishReason);
    }

    /// <summary>Token 316 first appears as the 6th greedy token of prompt 0 and never in the others' 10.</summary>
    [Fact]
    public void AStopTokenEndsItsSequenceWhileTheOthersContinue()
    {
        const int stop = 316;
        var expected = ReferenceGreedy;
        Assert.Equal(5, Array.IndexOf(expected[0], stop));
        Assert.DoesNotContain(stop, expected[1]);
        Assert.DoesNotContain(stop, expected[2]);
        var generator = new TernGenerator(model);
        var result = generator.GenerateTokens(Prompts, Greedy() with { StopTokenIds = new[] { stop } }, Ct);
        Assert.Equal(expected[0].Take(6), result.Sequences[0].Tokens);
        Assert.Equal(FinishReason.StopToken, result.Sequences[0].FinishReason);
        for (int i = 1; i < 3; i++)
        {
            Assert.Equal(expected[i], result.Sequences[i].Tokens);
            Assert.Equal(FinishReason.Length, result.Sequences[i].FinishReason);
        }
    }

    [Fact]
    public void WhenEverySequenceStopsGenerationEnds()
    {
        var generator = new TernGenerator(model);
        // Prompt 0 stops at its first token (217).
        var result = generator.GenerateTokens(new[] { Prompts[0] }, Greedy() with { StopTokenIds = new[] { 217 } }, Ct);
        Assert.Equal(new[] { 217 }, result.Sequences[0].Tokens);
        Assert.Equal(FinishReason.StopToken, result.Sequences[0].FinishReason);
        Assert.Equal(0, result.Stats.DecodeSteps);
    }

    /// <summary>llama-gqa's weights with another <c>eos_token_id</c> in config.json.</summary>
    static CausalLanguageModel WithEos(string eos)
    {
        string dir = Fixtures.ModelDir("llama-gqa");
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
        json["eos_token_id"] = JsonNode.Parse(eos);
        using var weights = CheckpointReader.Open(dir);
        return CausalLanguageModel.Create(HfConfig.Parse(json.ToJsonString(), "config.json"), weights, torch.CPU, ModelDType.Float32);
    }

    /// <summary>Without a tokenizer or explicit stop ids, config.json's eos_token_id (an int or a list) stops a sequence;
    /// IgnoreEos turns that off. (The fixture's own eos, 2, is never produced greedily.)</summary>
    [Theory]
    [InlineData("217")]
    [InlineData("[5, 217]")]
    public void TheModelsEosStopsByDefaultAndIgnoreEosDisablesIt(string eos)
    {
        Assert.Equal(ReferenceGreedy, Tokens(new TernGenerator(model).GenerateTokens(Prompts, new GenerationOptions { MaxNewTokens = 10 }, Ct)));
        using var eosModel = WithEos(eos);
        var generator = new TernGenerator(eosModel);
        var stopped = generator.GenerateTokens(new[] { Prompts[0] }, new GenerationOptions { MaxNewTokens = 10 }, Ct).Sequences[0];
        Assert.Equal(new[] { 217 }, stopped.Tokens);
        Assert.Equal(FinishReason.StopToken, stopped.FinishReason);
        var ignored = generator.GenerateTokens(new[] { Prompts[0] }, new GenerationOptions { MaxNewTokens = 10, IgnoreEos = true }, Ct).Sequences[0];
        Assert.Equal(ReferenceGreedy[0], ignored.Tokens);
        Assert.Equal(FinishReason.Length, ignored.FinishReason);
    }

    /// <summary>IgnoreEos is documented to make end-of-sequence tokens not stop generation; explicit
    /// <see cref="GenerationOptions.StopTokenIds"/> that are not the EOS token must still stop it.</summary>
    [Fact]
    public void IgnoreEosKeepsExplicitStopTokenIds()
    {
        var generator = new TernGenerator(model);
        var result = generator.GenerateTokens(Prompts, Greedy() with { IgnoreEos = true, StopTokenIds = new[] { 316 } }, Ct);
        Assert.Equal(ReferenceGreedy[0].Take(6), result.Sequences[0].Tokens);
        Assert.Equal(FinishReason.StopToken, result.Sequences[0].FinishReason);
    }

    // ---------------------------------------------------------------- streaming and cancellation

    [Theory]
    [InlineData(0.0)]
    [InlineData(0.8)]
    public async Task StreamingYieldsTheTokensOfGenerateTokens(double temperature)
    {
        var generator = new TernGenerator(model);
        var options = Greedy(12) with { Temperature = temperature, Seed = 5, IgnoreEos = true };
        var expected = Tokens(generator.GenerateTokens(Prompts, options, Ct));
        var streamed = new List<GeneratedToken>();
        await foreach (var t in generator.StreamAsync(Prompts, options, Ct)) streamed.Add(t);
        Assert.Equal(3 * 12, streamed.Count);
        // One token per sequence per step, in sequence order.
        Assert.Equal(Enumerable.Range(0, 12).SelectMany(_ => new[] { 0, 1, 2 }), streamed.Select(t => t.Sequence));
        for (int i = 0; i < 3; i++)
            Assert.Equal(expected[i], streamed.Where(t => t.Sequence == i).Select(t => t.TokenId));
        Assert.All(streamed, t => Assert.Equal("", t.Text)); // no tokenizer, no text
    }

    [Fact]
    public async Task StreamingStopsAStoppedSequence()
    {
        var generator = new TernGenerator(model);
        var streamed = new List<GeneratedToken>();
        await foreach (var t in generator.StreamAsync(Prompts, Greedy() with { StopTokenIds = new[] { 316 } }, Ct)) streamed.Add(t);
        Assert.Equal(ReferenceGreedy[0].Take(6), streamed.Where(t => t.Sequence == 0).Select(t => t.TokenId));
        Assert.Equal(ReferenceGreedy[1], streamed.Where(t => t.Sequence == 1).Select(t => t.TokenId));
    }

    [Fact]
    public async Task CancellationStopsStreaming()
    {
        var generator = new TernGenerator(model);
        using var cts = new CancellationTokenSource();
        var received = new List<GeneratedToken>();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var t in generator.StreamAsync(Prompts, Greedy(40), cts.Token))
            {
                received.Add(t);
                if (received.Count == 4) cts.Cancel();
            }
        });
        Assert.InRange(received.Count, 4, 6); // the rest of the step at most
        Assert.Equal(ReferenceGreedy[0].Take(2), received.Where(t => t.Sequence == 0).Select(t => t.TokenId));

        // The same through WithCancellation.
        using var cts2 = new CancellationTokenSource();
        int count = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var t in generator.StreamAsync(Prompts, Greedy(40), Ct).WithCancellation(cts2.Token))
                if (++count == 2) cts2.Cancel();
        });
        Assert.InRange(count, 2, 3);
    }

    [Fact]
    public void CancellationStopsGenerateTokens()
    {
        var generator = new TernGenerator(model);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => generator.GenerateTokens(Prompts, Greedy(40), cts.Token));
    }

    // ---------------------------------------------------------------- bad input

    [Fact]
    public void AnEmptyPromptIsRejectedByIndex()
    {
        var generator = new TernGenerator(model);
        var prompts = new[] { Prompts[0], Array.Empty<int>(), Prompts[2] };
        var ex = Assert.Throws<ArgumentException>(() => generator.GenerateTokens(prompts, Greedy(), Ct));
        Assert.Contains("prompt 1", ex.Message);

        var text = new TernGenerator(model, Tokenizer());
        var textEx = Assert.Throws<ArgumentException>(() => text.Generate(new[] { "Hello", "world", "" }, Greedy(), Ct));
        Assert.Contains("prompt 2", textEx.Message);

        Assert.Throws<ArgumentException>(() => generator.GenerateTokens(Array.Empty<IReadOnlyList<int>>(), Greedy(), Ct));
    }

    [Fact]
    public async Task AnEmptyPromptIsRejectedWhenStreaming()
    {
        var generator = new TernGenerator(model);
        var ex = await Assert.ThrowsAsync<ArgumentException>(async () =>
        {
            await foreach (var _ in generator.StreamAsync(new[] { Prompts[0], Array.Empty<int>() }, Greedy(), Ct)) { }
        });
        Assert.Contains("prompt 1", ex.Message);
    }

    [Theory]
    [InlineData(320)]
    [InlineData(-1)]
    [InlineData(100000)]
    public void ATokenOutsideTheVocabularyIsRejected(int id)
    {
        var generator = new TernGenerator(model);
        var prompts = new[] { Prompts[0], new[] { 5, id, 7 } };
        var ex = Assert.Throws<ArgumentException>(() => generator.GenerateTokens(prompts, Greedy(), Ct));
        Assert.Contains(id.ToString(), ex.Message);
        Assert.Contains("320", ex.Message);
    }

    [Theory]
    [InlineData(64)]
    [InlineData(100)]
    public void APromptLongerThanTheContextIsRejected(int length)
    {
        var generator = new TernGenerator(model);
        var prompt = Enumerable.Repeat(5, length).ToArray();
        var ex = Assert.Throws<ArgumentException>(() => generator.GenerateTokens(new[] { Prompts[0], prompt }, Greedy(), Ct));
        Assert.Contains("max_position_embeddings", ex.Message);
        Assert.Contains(length.ToString(), ex.Message);
    }

    public static TheoryData<GenerationOptions, TernOption> BadOptions => new()
    {
        { new GenerationOptions { MaxNewTokens = 0 }, TernOption.MaxNewTokens },
        { new GenerationOptions { MaxNewTokens = -3 }, TernOption.MaxNewTokens },
        { new GenerationOptions { Temperature = -0.1 }, TernOption.Temperature },
        { new GenerationOptions { Temperature = double.NaN }, TernOption.Temperature },
        { new GenerationOptions { TopK = -1 }, TernOption.TopK },
        { new GenerationOptions { TopP = 0 }, TernOption.TopP },
        { new GenerationOptions { TopP = 1.01 }, TernOption.TopP },
        { new GenerationOptions { TopP = -0.5 }, TernOption.TopP },
        { new GenerationOptions { TopP = double.NaN }, TernOption.TopP },
        { new GenerationOptions { RepetitionPenalty = 0 }, TernOption.RepetitionPenalty },
        { new GenerationOptions { RepetitionPenalty = -1 }, TernOption.RepetitionPenalty },
        { new GenerationOptions { RepetitionPenalty = double.NaN }, TernOption.RepetitionPenalty },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public void ValidateNamesTheBadOption(GenerationOptions options, TernOption option)
    {
        var ex = Assert.Throws<OptionException>(options.Validate);
        Assert.Equal(option, ex.Option);
        var generator = new TernGenerator(model);
        var fromGenerate = Assert.Throws<OptionException>(() => generator.GenerateTokens(Prompts, options, Ct));
        Assert.Equal(option, fromGenerate.Option);
    }

    [Fact]
    public void ValidateAcceptsTheDefaultsAndTheBoundaries()
    {
        new GenerationOptions().Validate();
        new GenerationOptions { MaxNewTokens = 1, Temperature = 0, TopK = 0, TopP = 1, RepetitionPenalty = 1e-3 }.Validate();
        new GenerationOptions { Temperature = 5, TopK = 1, TopP = 1e-9, RepetitionPenalty = 10 }.Validate();
    }

    // ---------------------------------------------------------------- text

    [Fact]
    public void TextOutputIsTheDecodedTokens()
    {
        var tokenizer = Tokenizer();
        var generator = new TernGenerator(model, tokenizer);
        var prompts = new[] { "Hello world", "The" };
        var result = generator.Generate(prompts, Greedy(16), Ct);
        for (int i = 0; i < prompts.Length; i++)
        {
            var s = result.Sequences[i];
            Assert.Equal(tokenizer.Encode(prompts[i], addSpecialTokens: true), s.PromptTokens);
            Assert.Equal(16, s.Tokens.Count);
            Assert.Equal(tokenizer.Decode(s.Tokens), s.Text);
        }
        // The same tokens as the token API on the tokenized prompts.
        var byTokens = generator.GenerateTokens(prompts.Select(p => tokenizer.Encode(p)).ToArray(), Greedy(16), Ct);
        Assert.Equal(Tokens(byTokens), Tokens(result));
    }

    static readonly string[] TextPrompts = { "Hello world", "The", "A cat" };

    async Task<(GenerationResult Result, string[] Streamed)> TextAndStream(TernGenerator generator, int maxNew)
    {
        var result = generator.Generate(TextPrompts, Greedy(maxNew), Ct);
        var streamed = TextPrompts.Select(_ => "").ToArray();
        await foreach (var t in generator.StreamAsync(TextPrompts, Greedy(maxNew), Ct)) streamed[t.Sequence] += t.Text;
        return (result, streamed);
    }

    /// <summary>Streamed text deltas concatenate to the final text. (The random fixture model emits byte tokens that do
    /// not always form valid UTF-8; sequences whose text ends in an incomplete character are the next test's.)</summary>
    [Fact]
    public async Task StreamedTextConcatenatesToTheText()
    {
        var generator = new TernGenerator(model, Tokenizer());
        var (result, streamed) = await TextAndStream(generator, 16);
        int checkedSequences = 0;
        for (int i = 0; i < TextPrompts.Length; i++)
        {
            string text = result.Sequences[i].Text!;
            if (text.EndsWith('\uFFFD')) continue;
            Assert.Equal(text, streamed[i]);
            checkedSequences++;
        }
        Assert.True(checkedSequences > 0);
    }

    /// <summary>When generation ends inside a multi-byte character (or on an invalid byte), the final text holds U+FFFD
    /// there; the stream must flush it at the end so that the deltas still concatenate to the text.</summary>
    [Fact]
    public async Task StreamedTextIsFlushedWhenGenerationEndsInsideACharacter()
    {
        var generator = new TernGenerator(model, Tokenizer());
        var (result, streamed) = await TextAndStream(generator, 16);
        var ending = Enumerable.Range(0, TextPrompts.Length).Where(i => result.Sequences[i].Text!.EndsWith('\uFFFD')).ToArray();
        Assert.NotEmpty(ending); // "Hello world" does, with the fixture model
        foreach (int i in ending) Assert.Equal(result.Sequences[i].Text, streamed[i]);
    }

    [Fact]
    public async Task AStopStringTruncatesTheText()
    {
        var tokenizer = Tokenizer();
        var generator = new TernGenerator(model, tokenizer);
        var prompts = new[] { "Hello world", "The" };
        var full = generator.Generate(prompts, Greedy(24), Ct).Sequences[0];
        string text = full.Text!;
        // A stop string from the middle of sequence 0's text, at its first occurrence.
        int at = -1;
        string stop = "";
        for (int k = text.Length / 2; k >= 1 && at < 0; k--)
        {
            string candidate = text.Substring(k, Math.Min(2, text.Length - k));
            if (candidate.Length == 2 && !candidate.Contains('\uFFFD') && text.IndexOf(candidate, StringComparison.Ordinal) == k)
                (at, stop) = (k, candidate);
        }
        Assert.True(at > 0, $"no usable stop string in '{text}'");

        var options = Greedy(24) with { StopStrings = new[] { stop } };
        var result = generator.Generate(prompts, options, Ct);
        var stopped = result.Sequences[0];
        Assert.Equal(text[..at], stopped.Text);
        Assert.Equal(FinishReason.StopString, stopped.FinishReason);
        Assert.True(stopped.Tokens.Count < full.Tokens.Count);
        Assert.Equal(full.Tokens.Take(stopped.Tokens.Count), stopped.Tokens);
        Assert.DoesNotContain(stop, stopped.Text);

        var streamed = new[] { "", "" };
        await foreach (var t in generator.StreamAsync(prompts, options, Ct)) streamed[t.Sequence] += t.Text;
        Assert.Equal(stopped.Text, streamed[0]);
        Assert.Equal(result.Sequences[1].Text, streamed[1]);
    }

    [Fact]
    public void TextNeedsATokenizer()
    {
        var generator = new TernGenerator(model);
        Assert.Throws<InvalidOperationException>(() => generator.Generate(new[] { "Hello" }, Greedy(), Ct));
        var ex = Assert.Throws<ArgumentException>(() => generator.GenerateTokens(Prompts, Greedy() with { StopStrings = new[] { "x" } }, Ct));
        Assert.Contains("tokenizer", ex.Message);
    }
}
