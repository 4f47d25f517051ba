using System.Globalization;

namespace Tern.Tests.Cli;

/// <summary>DejaVu's <c>--sparsity</c> on the commands that run a model: bad specifications stop the parse with one line
/// naming the flag (exit 2); on the shipped ReLU model, k = all neurons and heads is the dense run, and fewer change it.</summary>
public sealed class SparsityFlagTests
{
    [Theory]
    [InlineData("mlp=1.5", "tern: --mlp must be in (0, 1], the fraction of neurons computed (got 1.5).")]
    [InlineData("heads=0", "tern: --heads must be in (0, 1], the fraction of heads computed (got 0).")]
    [InlineData("rule=oracle", "tern: --sparsity 'rule=oracle' names no fraction: write e.g. mlp=0.1 or heads=0.5 (the fractions of MLP neurons and attention heads computed).")]
    [InlineData("mlp=0.1,rule=best", "tern: --sparsity: 'rule=best' is not understood; write mlp=FRACTION,heads=FRACTION[,rule=predicted|oracle|random][,seed=N][,overlap=true|false], e.g. mlp=0.1,heads=0.5.")]
    [InlineData("mlp=0.1,heads=half", "tern: --sparsity: 'heads=half' is not understood; write mlp=FRACTION,heads=FRACTION[,rule=predicted|oracle|random][,seed=N][,overlap=true|false], e.g. mlp=0.1,heads=0.5.")]
    public void BadSpecificationsAreOneLineAndExitTwo(string spec, string message)
    {
        foreach (var command in new[] { new[] { "generate" }, new[] { "bench" }, new[] { "serve" }, new[] { "eval", "ppl", "--text", "x" } })
        {
            var (code, lines) = CliProcess.Errors(command.Concat(new[] { "--model", "no/such/folder", "--sparsity", spec }).ToArray());
            Assert.Equal(2, code);
            Assert.Equal(message, lines[0]);
        }
    }

    /// <summary><c>--sparsity</c> with <c>--offload</c>: <c>tern generate</c> prints what it prints in memory under the same rule
    /// (the oracle, neurons and heads at half; two GPU batches of one row each), and <c>tern bench</c> labels its offloaded row.</summary>
    [Fact]
    public void OffloadedGenerationAndBenchRunIt()
    {
        string[] common = { "generate", "Hello there", "General Kenobi", "--model", DefaultModel, "--device", "cpu", "--max-new-tokens", "6", "--no-stream",
            "--sparsity", "mlp=0.5,heads=0.5,rule=oracle" };
        var (code, inMemory, error) = CliProcess.Run(common);
        Assert.True(code == 0, error);
        (code, var offloaded, error) = CliProcess.Run(common.Concat(new[] { "--offload", "w=0/100/0,kv=0/100/0,act=0/100/0,gbs=1,ngb=2" }).ToArray());
        Assert.True(code == 0, error);
        Assert.Contains("sparsity: ", error);
        Assert.Equal(inMemory, offloaded);

        using var dir = new TempDir();
        string csv = Path.Combine(dir.Path, "results.csv");
        (code, _, error) = CliProcess.Run("bench", "--model", DefaultModel, "--dummy", "--device", "cpu", "--prompt", "8", "--new-tokens", "4",
            "--offload", "w=0/100/0,kv=0/100/0,act=0/100/0,gbs=1,ngb=1", "--sparsity", "mlp=0.1,heads=0.5", "-o", csv);
        Assert.True(code == 0, error);
        Assert.Contains("[sparsity mlp=0.1,heads=0.5]", File.ReadAllLines(csv)[1]);
    }

    /// <summary>A model with dummy weights has no trained predictors: the bench times untrained ones of the default ranks.</summary>
    [Fact]
    public void TheBenchOfDummyWeightsRunsUntrainedPredictors()
    {
        using var dir = new TempDir();
        var (code, _, error) = CliProcess.Run("bench", "--model", DefaultModel, "--dummy", "--device", "cpu", "--prompt", "8", "--new-tokens", "4",
            "--sparsity", "mlp=0.1,heads=0.5", "-o", Path.Combine(dir.Path, "results.csv"));
        Assert.True(code == 0, error);
        Assert.Contains("untrained ones of the default ranks", error);
        Assert.Contains("sparsity: ", error);
    }

    /// <summary><c>--sparsity-sweep</c> runs its levels on one loaded model: a row per level, each sparse one with its predictor
    /// time, sparse MLP bandwidth and speed-up over the dense level; bad levels and a second --sparsity stop the parse.</summary>
    [Fact]
    public void TheSweepRunsEveryLevelOnOneModel()
    {
        using var dir = new TempDir();
        string csv = Path.Combine(dir.Path, "results.csv");
        var (code, output, error) = CliProcess.Run("bench", "--model", DefaultModel, "--dummy", "--device", "cpu", "--prompt", "8", "--new-tokens", "4",
            "--sparsity-sweep", "dense; mlp=0.1,heads=0.5 ;heads=0.5", "-o", csv);
        Assert.True(code == 0, error);
        var rows = File.ReadAllLines(csv).Skip(1).ToArray();
        Assert.Equal(3, rows.Length);
        Assert.Contains("[dense]", rows[0]);
        Assert.Contains("[sparsity mlp=0.1,heads=0.5,predicted] [predictors ", rows[1]);
        Assert.Contains("x dense decode]", rows[1]);
        Assert.Contains("[sparsity mlp=1,heads=0.5,predicted]", rows[2]);
        Assert.Matches(@"sparse MLP [0-9.]+ ms/layer \(up [0-9.]+\) reading", output);

        var (both, lines) = CliProcess.Errors("bench", "--model", "no/such/folder", "--sparsity", "heads=0.5", "--sparsity-sweep", "dense");
        Assert.Equal(2, both);
        Assert.Equal("tern: --sparsity-sweep runs its own levels; drop --sparsity.", lines[0]);
        var (bad, badLines) = CliProcess.Errors("bench", "--model", "no/such/folder", "--sparsity-sweep", "dense;mlp=2");
        Assert.Equal(2, bad);
        Assert.Equal("tern: --mlp must be in (0, 1], the fraction of neurons computed (got 2).", badLines[0]);
    }

    static readonly string DefaultModel = Path.GetFullPath(Path.Combine(Fixtures.Root, "..", "..", "models", "default"));

    static double Perplexity(string text, params string[] extra)
    {
        var (code, output, error) = CliProcess.Run(new[] { "eval", "ppl", "--model", DefaultModel, "--device", "cpu", "--text", text, "--max-tokens", "96", "--window", "48" }.Concat(extra).ToArray());
        Assert.True(code == 0, error);
        string number = output.Split("perplexity ")[1].Split(' ')[0];
        return double.Parse(number, CultureInfo.InvariantCulture);
    }

    [Fact]
    public void EveryNeuronAndHeadIsTheDenseRunAndFewerChangeIt()
    {
        string text = Path.Combine(Fixtures.Root, "..", "..", "README.md");
        double dense = Perplexity(text);
        Assert.Equal(dense, Perplexity(text, "--sparsity", "mlp=1,rule=oracle"));
        Assert.NotEqual(dense, Perplexity(text, "--sparsity", "mlp=0.05,rule=random"));
        Assert.Equal(dense, Perplexity(text, "--sparsity", "heads=1,rule=random"));
        Assert.NotEqual(dense, Perplexity(text, "--sparsity", "heads=0.25,rule=oracle"));

        var (code, output, error) = CliProcess.Run("generate", "--model", DefaultModel, "--device", "cpu", "A dictionary is", "--max-new-tokens", "6", "--no-stream");
        var (sparseCode, sparseOutput, sparseError) = CliProcess.Run("generate", "--model", DefaultModel, "--device", "cpu", "A dictionary is", "--max-new-tokens", "6", "--no-stream",
            "--sparsity", "mlp=1,heads=1,rule=oracle");
        Assert.True(code == 0 && sparseCode == 0, error + sparseError);
        Assert.Equal(output, sparseOutput);
        Assert.Contains("sparsity: ", sparseError);
    }

    /// <summary><c>tern eval sparsity</c> on the shipped model without predictors: heads rows for the oracle and random
    /// selection, the recall of random heads, cloze accuracy in every row, the CSV and the heads plot.</summary>
    [Fact]
    public void TheEvaluationMeasuresHeadsWithClozeAccuracy()
    {
        using var dir = new TempDir();
        string text = Path.Combine(Fixtures.Root, "..", "..", "README.md");
        var (code, output, error) = CliProcess.Run("eval", "sparsity", "--model", DefaultModel, "--device", "cpu", "--text", text, "--max-tokens", "96",
            "--window", "48", "--mlp", "none", "--heads", "0.5", "--combined-heads", "none", "--choice-items", "3", "-o", dir.Path);
        Assert.True(code == 0, error);
        Assert.Contains("holds no predictors", error);
        var csv = File.ReadAllLines(Path.Combine(dir.Path, "sparsity.csv"));
        Assert.Equal(new[] { "dense,dense", "heads,oracle", "heads,random" }, csv.Skip(1).Select(l => string.Join(',', l.Split(',').Take(2))));
        Assert.All(csv.Skip(1), l => Assert.Matches(@",(0|0\.\d+|1)$", l)); // an accuracy in every row
        Assert.True(File.Exists(Path.Combine(dir.Path, "sparsity-heads.png")));
        Assert.False(File.Exists(Path.Combine(dir.Path, "sparsity-mlp.png")));
        Assert.Contains("sparsity-heads.png", output);
    }
}
