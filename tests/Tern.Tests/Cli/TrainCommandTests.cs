using System.Text.Json.Nodes;
using Tern.Tests.Training;
using Tern.Training;

namespace Tern.Tests.Cli;

/// <summary><c>tern train</c> through the command line: what a run leaves in its folder.</summary>
public sealed class TrainCommandTests
{
    /// <summary>A run resumed with no step left (its export had failed, say) still writes <c>train-summary.json</c>, from the
    /// log (issue 18: it wrote none, the summary came from the steps run in that process), and the log keeps one row a step.</summary>
    [Fact]
    public void AResumedRunWithNoStepLeftStillWritesItsSummary()
    {
        using var dir = new TempDir();
        string config = dir.File("config.json");
        File.WriteAllText(config, TrainerTests.TinyConfig().Json.ToJsonString());
        var o = TrainerTests.Options(dir);
        string run = dir.File("run");
        string[] args = ["train", "--config", config, "--train", o.TrainTokens, "--valid", o.ValidTokens!, "-o", run, "--device", "cpu",
            "--steps", "6", "--seq-len", "16", "--batch-size", "4", "--eval-every", "3", "--eval-batches", "2"];
        var (code, _, error) = CliProcess.Run(args);
        Assert.True(code == 0, error);
        string summary = Path.Combine(run, "train-summary.json");
        var written = JsonNode.Parse(File.ReadAllText(summary))!;
        Assert.Equal(6, (int)written["steps"]!);

        File.Delete(summary);
        (code, _, error) = CliProcess.Run([.. args, "--resume"]);
        Assert.True(code == 0, error);
        Assert.Contains("from step 6/6", error);
        var again = JsonNode.Parse(File.ReadAllText(summary))!;
        Assert.Equal(6, (int)again["steps"]!);
        Assert.Equal((double)written["final_loss"]!, (double)again["final_loss"]!);
        Assert.Equal(Enumerable.Range(1, 6), TrainingLog.Read(Path.Combine(run, TrainingLog.FileName)).Select(r => r.Step));
    }
}
