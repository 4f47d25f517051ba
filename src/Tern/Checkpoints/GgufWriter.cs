using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Checkpoints;

/// <summary>How a tensor's elements are stored in a GGUF file (ggml's type numbers).</summary>
public enum GgufTensorType
{
    /// <summary>32-bit floats.</summary>
    F32 = 0,

    /// <summary>IEEE half floats.</summary>
    F16 = 1,

    /// <summary>Blocks of 32 signed bytes sharing one fp16 scale (34 bytes a block): x ≈ d·q, d = max|x| / 127.</summary>
    Q8_0 = 8,
}

/// <summary>
/// Writes a GGUF v3 file (llama.cpp's model format): header, metadata key–values, tensor infos, then every tensor's data
/// at an offset aligned to <see cref="Alignment"/>. Tensors are added as producers and read one at a time while writing,
/// so a model is never held twice in memory.
/// </summary>
public sealed class GgufWriter
{
    /// <summary>Alignment of the data section and of every tensor in it (GGUF's default; written as <c>general.alignment</c>
    /// only when it differs).</summary>
    public const int Alignment = 32;

    /// <summary>Elements per <see cref="GgufTensorType.Q8_0"/> block.</summary>
    public const int Q8BlockSize = 32;

    const uint Magic = 0x46554747; // "GGUF" read as a little-endian u32
    const uint Version = 3;

    enum ValueType : uint { UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9 }

    readonly List<(string Key, Action<BinaryWriter> Write)> metadata = [];
    readonly List<(string Name, long[] Shape, GgufTensorType Type, Func<Tensor> Data)> tensors = [];

    /// <summary>Adds a string value.</summary>
    public void Add(string key, string value) => AddValue(key, w => { w.Write((uint)ValueType.String); WriteString(w, value); });

    /// <summary>Adds an unsigned 32-bit value.</summary>
    public void Add(string key, uint value) => AddValue(key, w => { w.Write((uint)ValueType.UInt32); w.Write(value); });

    /// <summary>Adds a 32-bit float value.</summary>
    public void Add(string key, float value) => AddValue(key, w => { w.Write((uint)ValueType.Float32); w.Write(value); });

    /// <summary>Adds a boolean value.</summary>
    public void Add(string key, bool value) => AddValue(key, w => { w.Write((uint)ValueType.Bool); w.Write(value); });

    /// <summary>Adds an array of strings.</summary>
    public void Add(string key, IReadOnlyList<string> values) => AddValue(key, w =>
    {
        WriteArrayHeader(w, ValueType.String, values.Count);
        foreach (string v in values) WriteString(w, v);
    });

    /// <summary>Adds an array of signed 32-bit values.</summary>
    public void Add(string key, IReadOnlyList<int> values) => AddValue(key, w =>
    {
        WriteArrayHeader(w, ValueType.Int32, values.Count);
        foreach (int v in values) w.Write(v);
    });

    /// <summary>Adds a tensor of PyTorch shape <paramref name="shape"/> (row-major, last dimension fastest), produced when
    /// the data is written by <paramref name="data"/> (any dtype; converted to fp32, then to <paramref name="type"/>; the
    /// writer disposes it).</summary>
    /// <exception cref="ArgumentException">Q8_0 for a tensor whose rows are not whole blocks of 32.</exception>
    public void AddTensor(string name, long[] shape, GgufTensorType type, Func<Tensor> data)
    {
        if (type == GgufTensorType.Q8_0 && shape[^1] % Q8BlockSize != 0)
            throw new ArgumentException($"{name}: q8_0 needs rows of a multiple of {Q8BlockSize} elements, not {shape[^1]}.");
        if (tensors.Any(t => t.Name == name)) throw new ArgumentException($"tensor {name} was added twice.");
        tensors.Add((name, shape, type, data));
    }

    /// <summary>Bytes one tensor takes in the data section (before alignment padding).</summary>
    public static long DataBytes(long[] shape, GgufTensorType type)
    {
        long n = shape.Aggregate(1L, (a, b) => a * b);
        return type switch
        {
            GgufTensorType.F32 => n * 4,
            GgufTensorType.F16 => n * 2,
            GgufTensorType.Q8_0 => n / Q8BlockSize * (2 + Q8BlockSize),
            _ => throw new ArgumentOutOfRangeException(nameof(type)),
        };
    }

    /// <summary>Writes the file to <paramref name="stream"/>.</summary>
    public void Write(Stream stream)
    {
        using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true); // BinaryWriter is little-endian
        w.Write(Magic);
        w.Write(Version);
        w.Write((ulong)tensors.Count);
        w.Write((ulong)metadata.Count);
        foreach (var (key, write) in metadata)
        {
            WriteString(w, key);
            write(w);
        }
        long offset = 0;
        foreach (var (name, shape, type, _) in tensors)
        {
            WriteString(w, name);
            w.Write((uint)shape.Length);
            // ggml lists dimensions fastest first: the reverse of PyTorch's order.
            for (int d = shape.Length - 1; d >= 0; d--) w.Write((ulong)shape[d]);
            w.Write((uint)type);
            w.Write((ulong)offset);
            offset = Align(offset + DataBytes(shape, type));
        }
        Pad(w);
        foreach (var (name, shape, type, data) in tensors)
        {
            using var scope = torch.NewDisposeScope();
            var t = data();
            if (!t.shape.SequenceEqual(shape))
                throw new InvalidOperationException($"{name}: the producer gave shape [{string.Join(", ", t.shape)}], declared [{string.Join(", ", shape)}].");
            float[] values = t.to(ScalarType.Float32, CPU).contiguous().data<float>().ToArray();
            w.Write(Encode(values, type));
            Pad(w);
        }
        w.Flush();
    }

    /// <summary>The bytes of <paramref name="values"/> stored as <paramref name="type"/>.</summary>
    internal static byte[] Encode(float[] values, GgufTensorType type)
    {
        switch (type)
        {
            case GgufTensorType.F32:
                return MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
            case GgufTensorType.F16:
            {
                var bytes = new byte[values.Length * 2];
                for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(2 * i), (Half)values[i]);
                return bytes;
            }
            case GgufTensorType.Q8_0:
            {
                var bytes = new byte[values.Length / Q8BlockSize * (2 + Q8BlockSize)];
                for (int b = 0; b < values.Length / Q8BlockSize; b++)
                {
                    var block = values.AsSpan(b * Q8BlockSize, Q8BlockSize);
                    var dst = bytes.AsSpan(b * (2 + Q8BlockSize), 2 + Q8BlockSize);
                    float amax = 0;
                    foreach (float x in block) amax = MathF.Max(amax, MathF.Abs(x));
                    // As ggml's quantize_row_q8_0_ref: the scale is rounded to fp16, the quotients use the fp32 one.
                    float d = amax / 127f, inverse = d != 0 ? 1f / d : 0f;
                    BinaryPrimitives.WriteHalfLittleEndian(dst, (Half)d);
                    for (int i = 0; i < Q8BlockSize; i++) dst[2 + i] = (byte)(sbyte)MathF.Round(block[i] * inverse, MidpointRounding.AwayFromZero);
                }
                return bytes;
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(type));
        }
    }

    /// <summary>The values that <paramref name="bytes"/> of <see cref="GgufTensorType.Q8_0"/> blocks decode to (d·q).</summary>
    internal static float[] DecodeQ8(ReadOnlySpan<byte> bytes)
    {
        int blocks = bytes.Length / (2 + Q8BlockSize);
        var values = new float[blocks * Q8BlockSize];
        for (int b = 0; b < blocks; b++)
        {
            var block = bytes.Slice(b * (2 + Q8BlockSize), 2 + Q8BlockSize);
            float d = (float)BinaryPrimitives.ReadHalfLittleEndian(block);
            for (int i = 0; i < Q8BlockSize; i++) values[b * Q8BlockSize + i] = d * (sbyte)block[2 + i];
        }
        return values;
    }

    void AddValue(string key, Action<BinaryWriter> write)
    {
        if (metadata.Any(m => m.Key == key)) throw new ArgumentException($"metadata key {key} was added twice.");
        metadata.Add((key, write));
    }

    static void WriteArrayHeader(BinaryWriter w, ValueType element, int count)
    {
        w.Write((uint)ValueType.Array);
        w.Write((uint)element);
        w.Write((ulong)count);
    }

    static void WriteString(BinaryWriter w, string s)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static long Align(long offset) => (offset + Alignment - 1) / Alignment * Alignment;

    static void Pad(BinaryWriter w)
    {
        w.Flush();
        long position = w.BaseStream.Position;
        for (long i = position; i < Align(position); i++) w.Write((byte)0);
    }
}
