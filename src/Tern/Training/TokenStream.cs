using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Training;

/// <summary>
/// A binary file of token ids held in memory, cut into training windows of T+1 tokens (inputs and the targets shifted by one).
/// Random windows come from a SplitMix64 generator whose whole state is one number, so a checkpoint can save and restore it
/// exactly; validation reads fixed, non-overlapping windows from the start and touches no generator.
/// </summary>
public sealed class TokenStream
{
    readonly int[] tokens;

    TokenStream(string path, int[] tokens) { Path = path; this.tokens = tokens; }

    /// <summary>The file read.</summary>
    public string Path { get; }
    /// <summary>Tokens in the file.</summary>
    public int Count => tokens.Length;

    /// <summary>Reads <paramref name="path"/>; every id must be below <paramref name="vocabSize"/>.</summary>
    public static TokenStream Load(string path, TokenFileFormat format, int vocabSize)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"token file '{System.IO.Path.GetFullPath(path)}' does not exist.", path);
        byte[] bytes = File.ReadAllBytes(path);
        int width = format == TokenFileFormat.UInt16 ? 2 : 4;
        if (bytes.Length % width != 0)
            throw new InvalidDataException($"{path}: {bytes.Length} bytes is not a whole number of {format} token ids ({width} bytes each).");
        var ids = new int[bytes.Length / width];
        for (int i = 0; i < ids.Length; i++)
        {
            int id = width == 2 ? BitConverter.ToUInt16(bytes, 2 * i) : BitConverter.ToInt32(bytes, 4 * i);
            if (id < 0 || id >= vocabSize)
                throw new InvalidDataException($"{path}: token {i} is id {id}, outside the model's vocabulary of {vocabSize} (wrong token file format?).");
            ids[i] = id;
        }
        return new TokenStream(path, ids);
    }

    /// <summary>Writes ids as a token file (for tools and tests).</summary>
    public static void Write(string path, IEnumerable<int> ids, TokenFileFormat format)
    {
        Runtime.AtomicFile.Write(path, s =>
        {
            using var w = new BinaryWriter(s, System.Text.Encoding.UTF8, leaveOpen: true);
            foreach (int id in ids)
                if (format == TokenFileFormat.UInt16) w.Write(checked((ushort)id)); else w.Write(id);
        });
    }

    /// <summary>Windows that fit: a window needs T+1 tokens.</summary>
    void Require(int sequenceLength)
    {
        if (tokens.Length < sequenceLength + 1)
            throw new InvalidDataException($"{Path}: {tokens.Length} tokens is fewer than one window of {sequenceLength}+1.");
    }

    /// <summary>A batch of random windows: inputs and targets, int64 [B,T] on <paramref name="device"/>. Advances <paramref name="rng"/>.
    /// With <paramref name="startToken"/>, every input row begins with that id (then T-1 tokens of the window), the way models
    /// that always see a beginning-of-sequence token are trained; the targets stay the window's next tokens.</summary>
    public (Tensor Inputs, Tensor Targets) RandomBatch(ref ulong rng, int batchSize, int sequenceLength, Device device, int? startToken = null)
    {
        Require(sequenceLength);
        var starts = new int[batchSize];
        ulong range = (ulong)(tokens.Length - sequenceLength);
        for (int b = 0; b < batchSize; b++) starts[b] = (int)(SplitMix64.Next(ref rng) % range);
        return Gather(starts, sequenceLength, device, startToken);
    }

    /// <summary>Validation batch <paramref name="index"/>: consecutive non-overlapping windows from the start, wrapping around.</summary>
    public (Tensor Inputs, Tensor Targets) FixedBatch(int index, int batchSize, int sequenceLength, Device device, int? startToken = null)
    {
        Require(sequenceLength);
        int windows = (tokens.Length - 1) / sequenceLength;
        var starts = Enumerable.Range(0, batchSize).Select(b => (index * batchSize + b) % windows * sequenceLength).ToArray();
        return Gather(starts, sequenceLength, device, startToken);
    }

    (Tensor, Tensor) Gather(int[] starts, int t, Device device, int? startToken)
    {
        var inputs = new long[starts.Length * t];
        var targets = new long[starts.Length * t];
        for (int b = 0; b < starts.Length; b++)
            for (int i = 0; i < t; i++)
            {
                // With a start token the inputs shift right by one: [s, x0 … x(T-2)] predicts [x0 … x(T-1)].
                inputs[b * t + i] = startToken is { } s ? (i == 0 ? s : tokens[starts[b] + i - 1]) : tokens[starts[b] + i];
                targets[b * t + i] = startToken is null ? tokens[starts[b] + i + 1] : tokens[starts[b] + i];
            }
        var shape = new long[] { starts.Length, t };
        return (torch.tensor(inputs, shape).to(device), torch.tensor(targets, shape).to(device));
    }
}

/// <summary>SplitMix64 (Steele et al.): a tiny generator whose state is one 64-bit number.</summary>
public static class SplitMix64
{
    /// <summary>The next 64 random bits; advances <paramref name="state"/>.</summary>
    public static ulong Next(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
