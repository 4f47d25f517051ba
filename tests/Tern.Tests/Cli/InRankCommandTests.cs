using System.Text.Json.Nodes;
using Tern.Tests.Training;
using Tern.Training;
using Tern.Training.InRank;

namespace Tern.Tests.Cli;

/// <summary><c>tern train --inrank</c> and <c>tern export --dense</c> through the command line (issue 15).</summary>
public sealed class InRankCommandTests
{
    static string[] Train(TempDir dir, params string[] more)
    {
        string config = dir.File("config.json");
        File.WriteAllText(config, TrainerTests.TinyConfig().Json.ToJsonString());
        var o = TrainerTests.Options(dir);
        return new[] { "train", "--config", config, "--train", o.TrainTokens, "--valid", o.ValidTokens!, "-o", dir.File("run"), "--device", "cpu",
            "--steps", "8", "--seq-len", "16", "--batch-size", "4", "--eval-every", "4", "--eval-batches", "2" }.Concat(more).ToArray();
    }

    [Fact]
    public void TrainWithInRankFlagsThenExportDense()
    {
        using var dir = new TempDir();
        var (code, _, error) = CliProcess.Run(Train(dir, "--inrank", "--inrank-buffer", "4", "--inrank-warmup", "3", "--inrank-check-every", "2",
            "--inrank-stage1-steps", "4", "--inrank-moments", "reset", "--inrank-variant", "original"));
        Assert.True(code == 0, error);
        string run = dir.File("run");
        var saved = TrainerOptions.Load(Path.Combine(run, TrainerOptions.RunConfigFile), new TrainerOptions { OutputDirectory = run, TrainTokens = "" }).InRank;
        Assert.Equal(new InRankOptions { Buffer = 4, Warmup = 3, CheckEvery = 2, Stage1Steps = 4, Moments = MomentHandoff.Reset, Variant = Tern.Models.LowRankVariant.Original }, saved);
        var lowRank = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "config.json")))!["low_rank"]!;
        Assert.Equal(2, (int)lowRank["stage"]!);
        Assert.True(File.Exists(Path.Combine(run, RankLog.FileName)));
        Assert.True(File.Exists(Path.Combine(run, RankLog.PlotName)));

        (code, _, error) = CliProcess.Run("export", "--model", run, "-o", dir.File("dense"), "--dense");
        Assert.True(code == 0, error);
        Assert.Null(JsonNode.Parse(File.ReadAllText(dir.File("dense/config.json")))!["low_rank"]);
    }

    [Fact]
    public void ABufferTooBigForTheModelNamesTheFlags()
    {
        using var dir = new TempDir();
        var (code, lines) = CliProcess.Errors(Train(dir, "--inrank"));
        Assert.Equal(2, code);
        Assert.Contains(lines, l => l.Contains("--inrank-buffer 100") && l.Contains("--inrank-initial-rank 2") && l.Contains("Rmax = 16"));
    }

    [Fact]
    public void TheFixedRankControlIsOneFlag()
    {
        using var dir = new TempDir();
        var (code, _, error) = CliProcess.Run(Train(dir, "--low-rank", "3"));
        Assert.True(code == 0, error);
        var linears = JsonNode.Parse(File.ReadAllText(dir.File("run/config.json")))!["low_rank"]!["linears"]!.AsObject();
        Assert.All(linears, l => Assert.Equal(3, (int)l.Value!["rank"]!));
    }
}
