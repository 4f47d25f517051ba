using Tern.Labs;
using Tern.Tests.Cli;
using Tern.Tests.Training;
using Tern.Training;

namespace Tern.Tests.Labs;

public sealed class LabCommandTests
{
    [Fact]
    public void ScanSnapWritesItsCsvsAndPlotsAndPrintsTheLogsLosses()
    {
        using var dir = new TempDir();
        var (code, output, error) = CliProcess.Run("lab", "scan-snap", "--iterations", "5", "-o", dir.Path);
        Assert.True(code == 0, error);
        Assert.Contains("[2] loss: 2.36791", output); // the official log's 2.3679099
        foreach (string name in new[] { "loss.csv", "attention.csv", "entropy.png", "weights.png" })
            Assert.True(File.Exists(dir.File(name)), name);
        Assert.Equal(6, File.ReadAllLines(dir.File("loss.csv")).Length);
    }

    [Fact]
    public void ScanSnapSweepsListsOfLearningRates()
    {
        using var dir = new TempDir();
        var (code, output, error) = CliProcess.Run("lab", "scan-snap", "--iterations", "4", "--lr-z", "1", "--lr-ratio", "1,10", "--init", "default", "-o", dir.Path);
        Assert.True(code == 0, error);
        foreach (string name in new[] { "sweep.csv", "sweep-final-entropy.png", "sweep-entropy-lrz-1.png" })
            Assert.True(File.Exists(dir.File(name)), name);
        Assert.Equal(1 + 2 * 5, File.ReadAllLines(dir.File("sweep.csv")).Length); // 2 cells × 5 snapshots
    }

    [Theory]
    [InlineData("--lr-ratio", "1,x", "--lr-ratio must be positive numbers")]
    [InlineData("--lr-z", "-1", "--lr-z must be positive numbers")]
    [InlineData("--seeds", "0", "--seeds must be at least 1")]
    [InlineData("--length", "1", "--length must be at least 2")]
    public void BadScanSnapFlagsAreUsageErrorsNamingTheFlag(string flag, string value, string message)
    {
        var (code, lines) = CliProcess.Errors("lab", "scan-snap", flag, value);
        Assert.Equal(2, code);
        Assert.Contains(message, lines[0]);
    }

    [Fact]
    public void JomaWritesBothToysAndPlotsAProbeCsv()
    {
        using var dir = new TempDir();
        var (code, output, error) = CliProcess.Run("lab", "joma", "--steps", "200", "--toy-steps", "800", "-o", dir.Path);
        Assert.True(code == 0, error);
        Assert.Contains("at step 669", output);
        Assert.Contains("nonlinear case (Relu MLP, z trained): NC(z, ẑ) ≥ 0.9", output);
        foreach (string name in new[] { "linear.csv", "linear-invariant.png", "linear-components.png", "nonlinear-invariant.csv", "nonlinear-invariant.png", "nonlinear.csv", "nonlinear-entropy.png", "nonlinear-v.png" })
            Assert.True(File.Exists(dir.File(name)), name);
    }

    /// <summary>The trainer callback, off by default: with --probe-dynamics a run writes the probe's rows at step 0, every
    /// validation interval and the end, and draws them.</summary>
    [Fact]
    public void TrainWithProbeDynamicsRecordsEveryValidationInterval()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), TrainerTests.TinyConfig().Json.ToJsonString());
        var ids = Enumerable.Range(0, 3000).Select(i => (i * 7 + i / 13) % 60 + 3).ToArray();
        TokenStream.Write(dir.File("train.bin"), ids, TokenFileFormat.UInt16);
        TokenStream.Write(dir.File("valid.bin"), ids.Take(600), TokenFileFormat.UInt16);
        string[] Args(string output) => ["train", "--config", dir.File("config.json"), "--train", dir.File("train.bin"), "--valid", dir.File("valid.bin"),
            "-o", output, "--steps", "6", "--seq-len", "16", "--batch-size", "2", "--warmup", "1", "--eval-every", "3", "--eval-batches", "1",
            "--device", "cpu"];

        var (code, _, error) = CliProcess.Run([.. Args(dir.File("plain"))]);
        Assert.True(code == 0, error);
        Assert.False(Directory.Exists(dir.File("plain/dynamics")));

        (code, _, error) = CliProcess.Run([.. Args(dir.File("probed")), "--probe-dynamics", "--probe-windows", "2"]);
        Assert.True(code == 0, error);
        var rows = File.ReadAllLines(dir.File($"probed/dynamics/{TrainingDynamicsProbe.CsvName}")).Skip(1).Select(l => l.Split(',')).ToArray();
        Assert.Equal(new[] { "0", "0", "3", "3", "6", "6" }, rows.Select(r => r[0]));
        Assert.True(File.Exists(dir.File("probed/dynamics/attention-entropy.png")));

        // Its own cadence, independent of validation; the start and the last step always.
        (code, _, error) = CliProcess.Run([.. Args(dir.File("every")), "--probe-dynamics", "--probe-windows", "1", "--probe-every", "4"]);
        Assert.True(code == 0, error);
        rows = File.ReadAllLines(dir.File($"every/dynamics/{TrainingDynamicsProbe.CsvName}")).Skip(1).Select(l => l.Split(',')).ToArray();
        Assert.Equal(new[] { "0", "0", "4", "4", "6", "6" }, rows.Select(r => r[0]));
    }
}
