using Tern.Training;

namespace Tern.Tests.Training;

public sealed class LossCurveTests
{
    /// <summary>A resumed run cuts its log back to the checkpoint's step before logging again, so every step has one row
    /// (issue 18: 45 rows for 30 steps); the cut is atomic and keeps the rows as written.</summary>
    [Fact]
    public void AResumedRunCutsTheLogBackToItsCheckpoint()
    {
        string dir = Directory.CreateTempSubdirectory("tern-log-").FullName;
        try
        {
            string log = Path.Combine(dir, TrainingLog.FileName);
            for (int step = 1; step <= 5; step++)
                TrainingLog.Append(log, new TrainingProgress(step, 10, 5.0 - step, 1e-3, 1.0, 1000, step * 64L, step == 4 ? 3.3 : null));
            string before = File.ReadAllText(log);
            TrainingLog.TruncateAfter(log, 3); // killed after step 5, resumed from the step-3 checkpoint
            Assert.Equal(new[] { 1, 2, 3 }, TrainingLog.Read(log).Select(r => r.Step));
            Assert.StartsWith(File.ReadAllText(log), before);
            TrainingLog.Append(log, new TrainingProgress(4, 10, 0.9, 1e-3, 1.0, 1000, 256, null));
            Assert.Equal(new[] { 1, 2, 3, 4 }, TrainingLog.Read(log).Select(r => r.Step));
            Assert.Empty(LossCurve.FromLog(log).Validation); // the dropped step-4 row held the only validation loss
            TrainingLog.TruncateAfter(Path.Combine(dir, "none.jsonl"), 3); // no log yet: nothing to do
            Assert.False(File.Exists(Path.Combine(dir, "none.jsonl")));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void TheLogOfAResumedRunKeepsTheLaterLineOfEachStepAndDrawsAPng()
    {
        string dir = Directory.CreateTempSubdirectory("tern-curve-").FullName;
        try
        {
            string log = Path.Combine(dir, "train-log.jsonl");
            File.WriteAllLines(log, new[]
            {
                """{"step":1,"loss":5.0}""", """{"step":2,"loss":4.0,"valid_loss":4.5}""", """{"step":3,"loss":3.9}""",
                // killed after step 3, resumed from the step-2 checkpoint: step 3 is logged again
                """{"step":3,"loss":3.5}""", """{"step":4,"loss":3.0,"valid_loss":3.2}""",
            });
            var curve = LossCurve.FromLog(log);
            Assert.Equal(new[] { 1, 2, 3, 4 }, curve.Train.Keys);
            Assert.Equal(3.5, curve.Train[3]);
            Assert.Equal(new[] { 2, 4 }, curve.Validation.Keys);

            string png = Path.Combine(dir, "loss-curve.png");
            curve.SavePng(png, "test run");
            byte[] bytes = File.ReadAllBytes(png);
            Assert.True(bytes.Length > 2000);
            Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, bytes[..4]);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void AMalformedLineNamesTheFileAndLine()
    {
        string log = Path.Combine(Path.GetTempPath(), $"tern-{Guid.NewGuid():N}.jsonl");
        File.WriteAllLines(log, new[] { """{"step":1,"loss":5.0}""", "not json" });
        try
        {
            var e = Assert.Throws<InvalidDataException>(() => LossCurve.FromLog(log));
            Assert.Contains(":2:", e.Message);
        }
        finally
        {
            File.Delete(log);
        }
    }
}
