using Tern.Training;

namespace Tern.Tests.Training;

public sealed class LossCurveTests
{
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
