using System.Text.Json.Nodes;
using Tern.Runtime;

namespace Tern.Training;

/// <summary>
/// A run's <c>train-log.jsonl</c>: one JSON object per optimizer step (<c>step</c>, <c>loss</c>, <c>lr</c>, <c>grad_norm</c>,
/// <c>tokens_per_second</c>, <c>tokens</c>, optional <c>valid_loss</c>). A resumed run first cuts the log back to its
/// checkpoint's step, so every step has one row: the one the run continued from.
/// </summary>
public static class TrainingLog
{
    /// <summary>The log's name in a run's output folder.</summary>
    public const string FileName = "train-log.jsonl";

    /// <summary>Appends the row of one finished step.</summary>
    public static void Append(string path, TrainingProgress p)
    {
        var line = new JsonObject
        {
            ["step"] = p.Step, ["loss"] = p.Loss, ["lr"] = p.LearningRate, ["grad_norm"] = p.GradNorm,
            ["tokens_per_second"] = p.TokensPerSecond, ["tokens"] = p.TokensSeen,
        };
        if (p.ValidLoss is { } valid) line["valid_loss"] = valid;
        File.AppendAllText(path, line.ToJsonString() + "\n");
    }

    /// <summary>Drops the rows after <paramref name="step"/> (steps a killed run logged past its last checkpoint, which the
    /// resumed run computes again), atomically; nothing when there is no log.</summary>
    public static void TruncateAfter(string path, int step)
    {
        if (!File.Exists(path)) return;
        string kept = string.Concat(Read(path).Where(r => r.Step <= step).Select(r => r.Row.ToJsonString() + "\n"));
        AtomicFile.Write(path, s => s.Write(System.Text.Encoding.UTF8.GetBytes(kept)));
    }

    /// <summary>The rows in file order, each with its line number and step; errors name the file and line.</summary>
    public static IEnumerable<(int Line, int Step, JsonObject Row)> Read(string path)
    {
        int number = 0;
        foreach (string line in File.ReadLines(path))
        {
            number++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonObject row;
            try
            {
                row = JsonNode.Parse(line) as JsonObject ?? throw new InvalidDataException($"{path}:{number}: not a JSON object.");
            }
            catch (System.Text.Json.JsonException e)
            {
                throw new InvalidDataException($"{path}:{number}: not a JSON object ({e.Message}).", e);
            }
            yield return (number, row["step"]?.GetValue<int>() ?? throw new InvalidDataException($"{path}:{number}: no \"step\"."), row);
        }
    }
}
