using System.Text;
using System.Text.Json;
using Tern.Tokenization;

namespace Tern.Tests.Tokenization;

/// <summary><see cref="BpeTrainer"/>: determinism, vocabulary size, byte coverage, merge order, the HF folder it writes, errors.</summary>
public sealed class BpeTrainerTests : IDisposable
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    private readonly string _temp = Directory.CreateTempSubdirectory("tern-bpe-").FullName;

    public void Dispose() => Directory.Delete(_temp, recursive: true);

    /// <summary>A few KB of English with repeats, punctuation, digits and newlines.</summary>
    private static readonly string Text = string.Join("\n", Enumerable.Range(0, 40).Select(i =>
        $"The quick brown fox jumps over the lazy dog number {i}. Then the other fox, the lazier one, slept " +
        $"in the shade of the old oak tree while the farmer's children played{(i % 3 == 0 ? "!" : ".")}\n" +
        "In the beginning there was the word, and the word was with the writer of these lines."));

    private string Dir(string name) => Path.Combine(_temp, name);

    private BpeTrainingResult Train(string text, string dir, BpeTrainerOptions? options = null)
    {
        var trainer = BpeTrainer.Create(options);
        trainer.AddText(text);
        return trainer.Train(dir);
    }

    [Fact]
    public void Training_is_deterministic()
    {
        Train(Text, Dir("a"), new BpeTrainerOptions { VocabSize = 400 });
        Train(Text, Dir("b"), new BpeTrainerOptions { VocabSize = 400 });
        foreach (string f in new[] { "tokenizer.json", "tokenizer_config.json" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(Dir("a"), f)), File.ReadAllBytes(Path.Combine(Dir("b"), f)));
    }

    [Fact]
    public void Vocabulary_has_the_requested_size_or_fewer_when_pairs_run_out()
    {
        var result = Train(Text, Dir("v"), new BpeTrainerOptions { VocabSize = 350 });
        Assert.Equal(350, result.VocabSize);
        Assert.Equal(350, TernTokenizer.Load(Dir("v")).VocabSize);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir("v"), "tokenizer.json")));
        Assert.Equal(350, doc.RootElement.GetProperty("model").GetProperty("vocab").EnumerateObject().Count());

        // "abab" repeated: once "abab" is one token no pair is left, so the vocabulary stops short.
        var small = Train(string.Join(" ", Enumerable.Repeat("abab", 10)), Dir("s"), new BpeTrainerOptions { VocabSize = 1000 });
        Assert.True(small.VocabSize < 1000);
        Assert.Equal(small.VocabSize, TernTokenizer.Load(Dir("s")).VocabSize);
    }

    [Fact]
    public void Every_string_round_trips_and_training_text_uses_merged_tokens()
    {
        Train(Text, Dir("r"), new BpeTrainerOptions { VocabSize = 500 });
        var tok = TernTokenizer.Load(Dir("r"));
        foreach (string s in new[] { "Hello, world!", "Ünïcödé façade — “quotes”", "日本語のテキスト", "emoji 🦊🐕‍🦺 and 👩🏽‍💻", "tabs\tand\r\nnewlines\n\n  spaces  ", "\u0000\u0001\u007f" })
            Assert.Equal(s, tok.Decode(tok.Encode(s, addSpecialTokens: false)));

        string sentence = "The quick brown fox jumps over the lazy dog number 7.";
        var ids = tok.Encode(sentence, addSpecialTokens: false);
        Assert.True(ids.Count < Encoding.UTF8.GetByteCount(sentence) / 2, $"{ids.Count} ids for {sentence.Length} bytes");
        Assert.Contains(" the", ids.Select(id => tok.Decode(new[] { id })));
    }

    [Fact]
    public void Merges_are_learned_by_count_then_smallest_pair_and_applied_in_order()
    {
        // Pairs: "cd" occurs 15 times, "ab" and "bc" 10 times each. So: c+d first, then a+b (smaller ids than b+c
        // which "cd" has consumed anyway), then ab+cd.
        string text = string.Concat(Enumerable.Repeat("abcd\n", 10)) + string.Concat(Enumerable.Repeat("cd\n", 5));
        var options = new BpeTrainerOptions { VocabSize = 257 + 3, SpecialTokens = new[] { "<|endoftext|>" } };
        Train(text, Dir("m"), options);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir("m"), "tokenizer.json")));
        var merges = doc.RootElement.GetProperty("model").GetProperty("merges").EnumerateArray()
            .Select(m => m[0].GetString() + " " + m[1].GetString()).ToArray();
        Assert.Equal(new[] { "c d", "a b", "ab cd" }, merges);

        var tok = TernTokenizer.Load(Dir("m"));
        var vocab = doc.RootElement.GetProperty("model").GetProperty("vocab");
        int Id(string t) => vocab.GetProperty(t).GetInt32();
        Assert.Equal(new[] { Id("abcd") }, tok.Encode("abcd", false));
        Assert.Equal(new[] { Id("ab"), Id("c") }, tok.Encode("abc", false));
        Assert.Equal(new[] { Id("b"), Id("cd") }, tok.Encode("bcd", false));

        // With only the first merge learned, "abcd" is a, b, cd.
        Train(text, Dir("m1"), options with { VocabSize = 258 });
        var tok1 = TernTokenizer.Load(Dir("m1"));
        Assert.Equal(new[] { Id("a"), Id("b"), Id("cd") }, tok1.Encode("abcd", false));
    }

    [Fact]
    public void Special_tokens_are_single_ids_and_named_in_the_config()
    {
        var options = new BpeTrainerOptions
        {
            VocabSize = 320, SpecialTokens = new[] { "<|endoftext|>" }, BosToken = "<|bos|>", EosToken = "<|endoftext|>", PadToken = "<|pad|>",
        };
        Train(Text + "<|endoftext|>" + Text, Dir("sp"), options);
        var tok = TernTokenizer.Load(Dir("sp"));
        Assert.Equal(0, tok.EosTokenId);
        Assert.Equal(1, tok.BosTokenId);
        Assert.Equal(2, tok.PadTokenId);
        Assert.Equal(new[] { 0 }, tok.Encode("<|endoftext|>", false));
        Assert.Equal(new[] { 1 }, tok.Encode("<|bos|>", false));
        var ids = tok.Encode("fox<|pad|>dog", false);
        Assert.Contains(2, ids);
        Assert.Equal("fox<|pad|>dog", tok.Decode(ids, skipSpecialTokens: false));
        Assert.Equal("foxdog", tok.Decode(ids));
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir("sp"), "tokenizer.json")));
        Assert.Equal(3, doc.RootElement.GetProperty("added_tokens").GetArrayLength());
    }

    [Fact]
    public void Written_files_have_the_shape_hf_writes()
    {
        Train(Text, Dir("shape"), new BpeTrainerOptions { VocabSize = 300 });
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir("shape"), "tokenizer.json")));
        using var hf = JsonDocument.Parse(File.ReadAllText(Path.Combine(Fixtures.TokenizerDir("neox-tokenizer-json"), "tokenizer.json")));
        Assert.Equal(hf.RootElement.EnumerateObject().Select(p => p.Name), doc.RootElement.EnumerateObject().Select(p => p.Name));
        Assert.Equal(hf.RootElement.GetProperty("model").EnumerateObject().Select(p => p.Name),
            doc.RootElement.GetProperty("model").EnumerateObject().Select(p => p.Name));
        foreach (string step in new[] { "pre_tokenizer", "post_processor", "decoder" })
            Assert.Equal(hf.RootElement.GetProperty(step).GetRawText(), doc.RootElement.GetProperty(step).GetRawText());
        Assert.Empty(Directory.GetFiles(Dir("shape"), "*.tmp"));
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir("shape"), "tokenizer_config.json")));
        Assert.Equal(1024, config.RootElement.GetProperty("model_max_length").GetInt32());
    }

    [Fact]
    public void Bad_inputs_give_clear_errors()
    {
        var e = Assert.Throws<ArgumentException>(() => BpeTrainer.Create(new BpeTrainerOptions { VocabSize = 256 }));
        Assert.Contains("at least 257", e.Message);
        Assert.Throws<ArgumentException>(() => BpeTrainer.Create(new BpeTrainerOptions { SpecialTokens = new[] { "" } }));

        string missing = Path.Combine(_temp, "nope.txt");
        var f = Assert.Throws<FileNotFoundException>(() => BpeTrainer.TrainFiles(new[] { missing }, Dir("x"), cancellationToken: Ct));
        Assert.Contains(missing, f.Message);

        string empty = Path.Combine(_temp, "empty.txt");
        File.WriteAllText(empty, "");
        var e2 = Assert.Throws<ArgumentException>(() => BpeTrainer.TrainFiles(new[] { empty }, Dir("x"), cancellationToken: Ct));
        Assert.Contains("no text", e2.Message);
        Assert.Throws<ArgumentException>(() => BpeTrainer.TrainFiles(Array.Empty<string>(), Dir("x"), cancellationToken: Ct));
        Assert.False(File.Exists(Path.Combine(Dir("x"), "tokenizer.json")));
    }
}
