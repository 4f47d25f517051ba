namespace Tern.Tests.Cli;

/// <summary><c>tern compress</c>, <c>tern prompt train</c> and <c>--soft-prompt</c> end to end on a tiny fixture, and their
/// usage errors.</summary>
public sealed class CompressPromptCommandTests
{
    static readonly string Model = Fixtures.ModelDir("llama-gqa");

    [Fact]
    public void CompressThenPromptThenEvaluateAndGenerate()
    {
        using var dir = new TempDir();
        string text = dir.File("text.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("the quick brown fox jumps over the lazy dog. a stitch in time saves nine. ", 40)));
        string compressed = dir.File("gptq3"), prompt = dir.File("prompt.safetensors");

        var (code, output, error) = CliProcess.Run("compress", "-m", Model, "--device", "cpu", "--method", "gptq", "--bits", "3",
            "--calib-text", text, "--calib-samples", "4", "--calib-seq-len", "16", "-o", compressed);
        Assert.True(code == 0, error);
        Assert.Contains("gptq-3bit", output);
        Assert.True(File.Exists(Path.Combine(compressed, "compression.json")));
        Assert.True(File.Exists(Path.Combine(compressed, "tokenizer.json")));

        (code, output, error) = CliProcess.Run("prompt", "train", "-m", compressed, "--device", "cpu", "--text", text, "--valid-text", text,
            "--tokens", "3", "--steps", "4", "--warmup", "1", "--seq-len", "12", "--eval-every", "2", "--eval-tokens", "64", "-o", prompt);
        Assert.True(code == 0, error);
        Assert.Contains("valid NLL", output);
        Assert.True(File.Exists(prompt));

        (code, output, error) = CliProcess.Run("eval", "ppl", "-m", compressed, "--device", "cpu", "--text", text, "--max-tokens", "100",
            "--window", "16", "--stride", "15", "--soft-prompt", prompt);
        Assert.True(code == 0, error);
        Assert.Contains("released Compress-Then-Prompt formula", output);

        (code, output, error) = CliProcess.Run("generate", "-m", compressed, "--device", "cpu", "--max-new-tokens", "3", "--no-stream", "--soft-prompt", prompt, "the quick");
        Assert.True(code == 0, error);
        Assert.Contains("soft prompt of 3 vectors", error);

        string csv = dir.File("bench.csv");
        (code, output, error) = CliProcess.Run("bench", "-m", compressed, "--device", "cpu", "--batch", "2", "--prompt", "5", "--new-tokens", "3", "-o", csv, "--soft-prompt", prompt);
        Assert.True(code == 0, error);
        Assert.Contains("[soft prompt 3]", File.ReadAllText(csv));
    }

    [Theory]
    [InlineData("compress --method gptq -o {dir}/out", "--method gptq calibrates on text: pass --calib-text FILE")]
    [InlineData("compress --method rtn --bits 5 -m {model} --device cpu -o {dir}/out", "--bits must be 2, 3, 4 or 8 (got 5).")]
    [InlineData("compress --method sparsegpt --sparsity 1.5 -m {model} --device cpu --calib-text {model}/config.json -o {dir}/out", "--sparsity must be in [0, 1) (got 1.5).")]
    [InlineData("eval ppl -m {model} --device cpu --text {model}/config.json --soft-prompt {dir}/none.safetensors", "--soft-prompt '")]
    public void BadOptionsExitTwoNamingTheFlag(string args, string message)
    {
        using var dir = new TempDir();
        var (code, lines) = CliProcess.Errors(args.Replace("{dir}", dir.Path).Replace("{model}", Model).Split(' '));
        Assert.Equal(2, code);
        Assert.Contains(lines, l => l.Contains(message));
    }
}
