using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Tern.Runtime;

namespace Tern.Training;

/// <summary>A checkpoint that cannot be resumed from, with a message naming the file.</summary>
public sealed class TrainingCheckpointException : Exception
{
    /// <summary>Creates the exception.</summary>
    public TrainingCheckpointException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>
/// The checkpoint folder of a run: an HF model folder (config.json, model.safetensors) plus <c>optimizer.bin</c> (TorchSharp's
/// AdamW state) and <c>trainer-state.json</c> (step, sampler state, and the size and SHA-256 of every other file, so a
/// truncated or altered file is named on load instead of failing somewhere inside TorchSharp).
/// A save writes a fresh temporary folder, then swaps it in: <c>checkpoint-last</c> → <c>checkpoint-prev</c>, the new folder
/// → <c>checkpoint-last</c>, then deletes <c>checkpoint-prev</c>. A crash at any point leaves a complete checkpoint under one
/// of the two names, and <see cref="Find"/> picks it.
/// </summary>
public static class TrainingCheckpoint
{
    /// <summary>Folder name of the newest checkpoint.</summary>
    public const string LastName = "checkpoint-last";
    /// <summary>Folder name the previous checkpoint has while a new one is swapped in.</summary>
    public const string PreviousName = "checkpoint-prev";
    /// <summary>The trainer's state file.</summary>
    public const string StateFile = "trainer-state.json";
    /// <summary>The optimizer's state file.</summary>
    public const string OptimizerFile = "optimizer.bin";
    const string Format = "tern-train-checkpoint/1";

    /// <summary>The trainer state recorded in a checkpoint.</summary>
    public sealed record State(int Step, ulong SamplerState, long TokensSeen);

    /// <summary>The complete checkpoint under <paramref name="outputDirectory"/>, or null when there is none.</summary>
    public static string? Find(string outputDirectory)
    {
        string last = Path.Combine(outputDirectory, LastName), prev = Path.Combine(outputDirectory, PreviousName);
        if (Directory.Exists(last)) return last;
        return Directory.Exists(prev) ? prev : null; // a crash between the two renames of a save
    }

    /// <summary>Removes the temporary folders of saves that never finished (a process killed while writing): a run calls it
    /// when it starts or resumes, when no save of its own is under way.</summary>
    public static void RemoveStaleTemporaries(string outputDirectory)
    {
        if (!Directory.Exists(outputDirectory)) return;
        foreach (string temp in Directory.GetDirectories(outputDirectory, ".checkpoint-*.tmp")) Directory.Delete(temp, recursive: true);
    }

    /// <summary>Writes a checkpoint: <paramref name="writeFiles"/> fills the temporary folder, then the state file is
    /// written with the checksums and the folder is swapped in.</summary>
    public static string Save(string outputDirectory, State state, Action<string> writeFiles, Action<string>? onFile = null)
    {
        Directory.CreateDirectory(outputDirectory);
        string temp = Path.Combine(outputDirectory, $".checkpoint-{Guid.NewGuid():N}.tmp");
        string last = Path.Combine(outputDirectory, LastName), prev = Path.Combine(outputDirectory, PreviousName);
        try
        {
            Directory.CreateDirectory(temp);
            writeFiles(temp);
            var files = new JsonObject();
            foreach (string file in Directory.GetFiles(temp).OrderBy(f => f, StringComparer.Ordinal))
            {
                onFile?.Invoke(file);
                files[Path.GetFileName(file)] = new JsonObject { ["bytes"] = new FileInfo(file).Length, ["sha256"] = Sha256(file) };
            }
            var json = new JsonObject
            {
                ["format"] = Format,
                ["step"] = state.Step,
                ["sampler_state"] = state.SamplerState.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["tokens_seen"] = state.TokensSeen,
                ["files"] = files,
            };
            string statePath = Path.Combine(temp, StateFile);
            AtomicFile.Write(statePath, s => { using var w = new Utf8JsonWriter(s, new JsonWriterOptions { Indented = true }); json.WriteTo(w); });
            onFile?.Invoke(statePath);

            // Only a complete folder is ever renamed to a checkpoint name.
            if (Directory.Exists(last))
            {
                if (Directory.Exists(prev)) Directory.Delete(prev, recursive: true); // stale: last is complete
                Directory.Move(last, prev);
            }
            Directory.Move(temp, last);
            if (Directory.Exists(prev)) Directory.Delete(prev, recursive: true);
            return last;
        }
        catch
        {
            try { if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>Reads and verifies a checkpoint folder's state: every listed file present with its recorded size and hash.</summary>
    public static State Verify(string directory)
    {
        string statePath = Path.Combine(directory, StateFile);
        if (!File.Exists(statePath)) throw new TrainingCheckpointException($"{statePath}: missing; '{directory}' is not a complete checkpoint.");
        JsonObject json;
        try
        {
            json = JsonNode.Parse(File.ReadAllText(statePath)) as JsonObject ?? throw new JsonException("not a JSON object");
        }
        catch (JsonException e)
        {
            throw new TrainingCheckpointException($"{statePath}: corrupt checkpoint state ({e.Message}).", e);
        }
        try
        {
            if ((string?)json["format"] != Format) throw new TrainingCheckpointException($"{statePath}: format is '{json["format"]}', expected '{Format}'.");
            var files = json["files"] as JsonObject ?? throw new TrainingCheckpointException($"{statePath}: no 'files' list.");
            foreach (var (name, entry) in files)
            {
                string path = Path.Combine(directory, name);
                if (!File.Exists(path)) throw new TrainingCheckpointException($"{path}: missing from the checkpoint.");
                long bytes = (long)entry!["bytes"]!;
                long actual = new FileInfo(path).Length;
                if (actual != bytes) throw new TrainingCheckpointException($"{path}: {actual} bytes, the checkpoint recorded {bytes} (truncated or partial write).");
                if (Sha256(path) != (string?)entry["sha256"]) throw new TrainingCheckpointException($"{path}: contents differ from the checkpoint's SHA-256 (corrupt file).");
            }
            foreach (string required in new[] { "config.json", Checkpoints.CheckpointReader.SingleFileName, OptimizerFile })
                if (!files.ContainsKey(required)) throw new TrainingCheckpointException($"{statePath}: does not list {required}.");
            return new State((int)json["step"]!, ulong.Parse((string)json["sampler_state"]!, System.Globalization.CultureInfo.InvariantCulture),
                (long)json["tokens_seen"]!);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException or OverflowException)
        {
            throw new TrainingCheckpointException($"{statePath}: malformed checkpoint state ({e.Message}).", e);
        }
    }

    static string Sha256(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }
}
