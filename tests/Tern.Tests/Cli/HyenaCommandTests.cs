using Tern.Distillation;
using Tern.Tests.Models;
using Tern.Tests.Training;
using Tern.Training;

namespace Tern.Tests.Cli;

/// <summary>A MultiHyena model through the command line and the trainer: <c>tern train</c> (and an exact resume), <c>tern distill
/// hyena</c> (the error table, the order sweep monotone on the trained model, an unstable folder refused), then <c>tern
/// generate</c> and <c>tern eval ppl</c> on the distilled folder.</summary>
public sealed class HyenaCommandTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    const string Tokenizer = "llama-gqa"; // vocabulary 320: the config below matches it

    static string Config(TempDir dir)
    {
        string path = dir.File("hyena.json");
        var json = TinyHyena.Config().Json.DeepClone().AsObject();
        json["vocab_size"] = 320;
        File.WriteAllText(path, json.ToJsonString());
        return path;
    }

    [Fact]
    public void TrainDistillGenerateAndEvaluateThroughTheCommandLine()
    {
        using var dir = new TempDir();
        var o = TrainerTests.Options(dir);
        var (code, _, error) = CliProcess.Run("train", "--config", Config(dir), "--train", o.TrainTokens, "--valid", o.ValidTokens!, "-o", dir.File("run"),
            "--device", "cpu", "--steps", "20", "--seq-len", "16", "--batch-size", "4", "--lr", "1e-2", "--warmup", "3", "--eval-every", "10",
            "--eval-batches", "2", "--tokenizer", Fixtures.ModelDir(Tokenizer));
        Assert.True(code == 0, error);
        Assert.Contains("multihyena", error);

        // The order sweep on the trained model: no filter's error rises with the order, and the table shows every order.
        string run = dir.File("run");
        string corpus = dir.File("text.txt");
        File.WriteAllText(corpus, string.Join(" ", Enumerable.Repeat("The quick brown fox jumps over the lazy dog.", 6)));
        (code, var table, error) = CliProcess.Run("distill", "hyena", "--model", run, "--out", dir.File("swept"), "--orders", "2,4,8", "--iterations", "15", "--each-order",
            "--eval-text", corpus, "--device", "cpu");
        Assert.True(code == 0, error);
        // --eval-text: the original's and every order's perplexity, and the curve.
        Assert.Matches(@"original\s+-\s+\d+\.\d{3}\s+\+0\.00%", table);
        foreach (int d in new[] { 2, 4, 8 }) Assert.Matches($@"order {d}\s+{d}\s+\d+\.\d{{3}}", table);
        Assert.True(new FileInfo(Path.Combine(dir.File("swept"), "perplexity-by-order.png")).Length > 1000);
        Assert.Contains("layer 2/2", error);
        Assert.Contains("d=8", table);
        var report = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir.File("swept"), ModalCheckpoint.ReportFile)))!;
        foreach (var layer in report["layers"]!.AsArray())
        {
            var sweep = layer!["sweep"]!.AsArray().Select(o => o!["relative_error"]!.AsArray().Select(e => (double)e!).ToArray()).ToArray();
            for (int c = 0; c < sweep[0].Length; c++)
                for (int k = 1; k < sweep.Length; k++)
                    Assert.True(sweep[k][c] <= sweep[k - 1][c] * (1 + 1e-9), $"layer {layer["layer"]}, filter {c}: {sweep[k - 1][c]} then {sweep[k][c]}");
            TestContext.Current.TestOutputHelper?.WriteLine($"layer {layer["layer"]}: worst error by order " + string.Join(", ", sweep.Select(e => e.Max().ToString("E2"))));
            // --each-order: a model folder per order, every layer at that order with the sweep's fit.
            foreach (var (order, k) in new[] { (2, 0), (4, 1), (8, 2) })
            {
                string folder = Path.Combine(dir.File("swept"), $"order-{order}");
                var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))!;
                Assert.All(config["distilled"]!["modes"]!.AsArray(), m => Assert.Equal(order / 2, (int)m!));
                var saved = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(folder, ModalCheckpoint.ReportFile)))!["layers"]!
                    .AsArray().Single(l => (int)l!["layer"]! == (int)layer["layer"]!)!;
                Assert.Equal(sweep[k].Max(), saved["max_relative_error"]!.GetValue<double>(), 12);
            }
        }
        (code, var swept, error) = CliProcess.Run("generate", "--model", Path.Combine(dir.File("swept"), "order-2"), "--device", "cpu", "--max-new-tokens", "4", "--no-stream", "The quick");
        Assert.True(code == 0, error);

        (code, _, error) = CliProcess.Run("distill", "hyena", "--model", run, "--out", dir.File("distilled"), "--order", "4");
        Assert.True(code == 0, error);
        string distilled = dir.File("distilled");
        (code, var text, error) = CliProcess.Run("generate", "--model", distilled, "--device", "cpu", "--max-new-tokens", "8", "--no-stream", "The quick brown fox");
        Assert.True(code == 0, error);
        Assert.False(string.IsNullOrWhiteSpace(text));
        (code, text, error) = CliProcess.Run("eval", "ppl", "--model", distilled, "--device", "cpu", "--text", corpus, "--window", "24", "--stride", "12");
        Assert.True(code == 0, error);
        Assert.Contains("perplexity", text + error, StringComparison.OrdinalIgnoreCase);

        // A pole pushed outside the unit circle: the folder is refused, naming the layer and the filter.
        TinyHyena.ReplacePole(distilled, layer: 0, filter: 1, mode: 0, System.Numerics.Complex.FromPolarCoordinates(1.5, 0.1));
        (code, _, error) = CliProcess.Run("generate", "--model", distilled, "--device", "cpu", "--max-new-tokens", "4", "The quick");
        Assert.NotEqual(0, code);
        Assert.Contains("layer 0, filter 1", error);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void BenchRunsAConfigWithDummyWeightsUndistilledOrDistilled(bool distilled)
    {
        using var dir = new TempDir();
        var json = TinyHyena.Config().Json.DeepClone().AsObject();
        // Random stable banks of S modes per layer, listed as a distilled folder lists them.
        if (distilled) json["distilled"] = new System.Text.Json.Nodes.JsonObject { ["modes"] = new System.Text.Json.Nodes.JsonArray(4, 2) };
        Directory.CreateDirectory(dir.File("shape"));
        File.WriteAllText(dir.File("shape/config.json"), json.ToJsonString());
        var (code, text, error) = CliProcess.Run("bench", "--model", dir.File("shape"), "--dummy", "--device", "cpu", "-b", "1,2", "-p", "8", "-n", "4",
            "-o", dir.File("bench.csv"));
        Assert.True(code == 0, error);
        Assert.Contains("multihyena", text);
        Assert.Equal(3, File.ReadAllLines(dir.File("bench.csv")).Length); // header and a row per batch size
    }

    [Fact]
    public void TrainingResumesExactly()
    {
        using var full = new TempDir();
        List<double> reference;
        using (var trainer = Trainer.Create(TinyHyena.Config(), TrainerTests.Options(full, steps: 8)))
            reference = trainer.Run(cancellation: Ct).Select(h => h.Loss).ToList();
        Assert.True(reference[^1] < reference[0], string.Join(", ", reference));

        using var split = new TempDir();
        var options = TrainerTests.Options(split, steps: 8);
        using (var trainer = Trainer.Create(TinyHyena.Config(), options)) trainer.Run(stopAfterStep: 5, cancellation: Ct); // checkpoint at step 4
        using var resumed = Trainer.Resume(options);
        Assert.Equal(4, resumed.Step);
        Assert.Equal(reference.Skip(4), resumed.Run(cancellation: Ct).Select(h => h.Loss));
    }
}
