
namespace Tern.Tests.Cli;

/// <summary>Issue 18's "every limit that cuts output says so" and "inputs are checked before anything loads", on
/// <c>tern generate</c> and the commands that read text files (llama-gqa: a 64-position context).</summary>
public sealed class GenerateCommandTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => CliProcess.Run(args);

    static readonly string Model = Fixtures.ModelDir("llama-gqa");

    [Fact]
    public void MaxNewTokensCutByTheContextIsNoted()
    {
        var (code, _, err) = Run("generate", "Hi", "--model", Model, "--device", "cpu", "--max-new-tokens", "100000");
        Assert.True(code == 0, err);
        Assert.Matches(@"note: generation capped at \d+ new tokens by the model's context \(max_position_embeddings 64 minus a \d+-token prompt\); --max-new-tokens 100000 asks for more\.", err);

        (code, _, err) = Run("generate", "Hi", "--model", Model, "--device", "cpu", "--max-new-tokens", "8");
        Assert.True(code == 0, err);
        Assert.DoesNotContain("capped", err);
    }

    /// <summary><c>tern generate --temperature 1e-38</c> prints the greedy text (issue 18: on the default model the process
    /// aborted, exit 134, on "probability tensor contains either inf, nan or element &lt; 0"); <c>--repetition-penalty 1e-38</c>
    /// generates. The default model's logits overflow float32 divided by 1e-38 (the fixture's small ones need 5e-324).</summary>
    [Theory]
    [InlineData("1e-38")]
    [InlineData("5e-324")]
    public void ATinyTemperatureIsGreedyAndATinyPenaltyGenerates(string tiny)
    {
        string model = Path.GetFullPath(Path.Combine(Fixtures.Root, "..", "..", "models", "default"));
        string[] Args(params string[] more) => ["generate", "The", "--model", model, "--device", "cpu", "--max-new-tokens", "12", "--ignore-eos", .. more];
        var (code, greedy, err) = Run(Args());
        Assert.True(code == 0, err);
        (code, var output, err) = Run(Args("--temperature", tiny, "--seed", "1"));
        Assert.True(code == 0, err);
        Assert.Equal(greedy, output);
        (code, output, err) = Run(Args("--repetition-penalty", tiny, "--temperature", "1", "--seed", "2"));
        Assert.True(code == 0, err);
        Assert.StartsWith("The", output);
        Assert.True(output.Length > "The".Length, output);
    }

    [Fact]
    public void AnOverLongPromptIsNotEchoed()
    {
        string prompt = string.Concat(Enumerable.Repeat("word ", 500));
        var (code, output, err) = Run("generate", prompt, "--model", Model, "--device", "cpu");
        Assert.Equal(1, code);
        Assert.DoesNotContain("word word", output + err);
        Assert.Contains("shorten the prompt", err);
    }

    [Fact]
    public void AnEmptyPromptIsRefusedBeforeTheModelLoads()
    {
        // The model folder does not exist: the prompt's error comes first.
        var (code, _, err) = Run("generate", "", "--model", "no/such/folder");
        Assert.Equal(2, code);
        Assert.StartsWith("tern: <prompt> is empty; give some text to continue.", err);
    }

    [Theory]
    [InlineData(new byte[] { (byte)'a', (byte)'b', 0, (byte)'c' }, "a NUL byte at offset 2")]
    [InlineData(new byte[] { (byte)'a', 0xC3, 0x28, (byte)'b' }, "invalid UTF-8 at offset 1")]
    public void BinaryTextFilesAreRefusedByName(byte[] content, string why)
    {
        string file = Path.Combine(Path.GetTempPath(), $"tern-binary-{Guid.NewGuid():N}.txt");
        string output = Path.Combine(Path.GetTempPath(), $"tern-tokenizer-{Guid.NewGuid():N}");
        File.WriteAllBytes(file, content);
        try
        {
            foreach (var (flag, args) in new[]
            {
                ("--text", new[] { "eval", "ppl", "--text", file, "--model", Model, "--device", "cpu" }),
                ("--text", new[] { "eval", "stream", "--text", file, "--model", Model, "--device", "cpu" }),
                ("--prompt-file", new[] { "generate", "--prompt-file", file, "--model", Model, "--device", "cpu" }),
                ("--input", new[] { "tokenizer", "train", "--input", file, "--output", output, "--vocab-size", "300" }),
            })
            {
                var (code, _, err) = Run(args);
                Assert.Equal(1, code);
                Assert.Equal($"tern: {flag}: '{file}' looks binary ({why}); pass a UTF-8 text file.", err.Trim());
            }
            Assert.False(Directory.Exists(output)); // refused before anything is written
        }
        finally
        {
            File.Delete(file);
            if (Directory.Exists(output)) Directory.Delete(output, recursive: true);
        }
    }

    [Fact]
    public void AUtf8TextWithAByteOrderMarkIsText()
    {
        string file = Path.Combine(Path.GetTempPath(), $"tern-text-{Guid.NewGuid():N}.txt");
        File.WriteAllText(file, "Once upon a time, a small model read a story. " + string.Concat(Enumerable.Repeat("Then it read more. ", 10)), new System.Text.UTF8Encoding(true));
        try
        {
            var (code, output, err) = Run("eval", "ppl", "--text", file, "--model", Model, "--device", "cpu");
            Assert.True(code == 0, err);
            Assert.Contains("perplexity", output);
        }
        finally
        {
            File.Delete(file);
        }
    }
}
