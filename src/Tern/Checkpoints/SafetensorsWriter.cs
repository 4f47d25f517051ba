using System.Buffers;
using System.Buffers.Binary;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;
using Tern.Runtime;

namespace Tern.Checkpoints;

/// <summary>
/// Writes safetensors files that huggingface/safetensors and <see cref="SafetensorsFile"/> accept: the header is
/// compact JSON padded with spaces to a multiple of 8 bytes, data follows in the order given. Files are written to
/// a temporary file in the same folder and renamed over the target, so a crash never leaves a partial file there.
/// </summary>
public static partial class SafetensorsWriter
{
    /// <summary>The metadata key transformers checks; added as <c>"format": "pt"</c> when the caller's metadata lacks it.</summary>
    public const string FormatKey = "format";

    /// <summary>
    /// Writes <paramref name="tensors"/> to <paramref name="path"/> (creating its folder if needed, replacing any file
    /// there). Tensors may be on any device and non-contiguous; they are copied to the CPU as needed and not modified.
    /// <paramref name="metadata"/> becomes <c>__metadata__</c>, with <c>"format": "pt"</c> added when absent so that
    /// transformers accepts the file.
    /// </summary>
    /// <exception cref="ArgumentException">A name is empty, duplicated or <c>__metadata__</c>, or a tensor's type
    /// (complex, quantized) cannot be stored.</exception>
    public static void Write(string path, IReadOnlyList<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(tensors);
        var entries = Describe(tensors);
        byte[] header = BuildHeader(entries, WithFormat(metadata));
        string full = Path.GetFullPath(path);
        AtomicFile.Write(full, stream =>
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
            stream.Write(length);
            stream.Write(header);
            foreach (var (_, tensor) in tensors)
            {
                using var scope = torch.NewDisposeScope();
                var cpu = tensor.device_type == DeviceType.CPU ? tensor : tensor.cpu();
                var contiguous = cpu.is_contiguous() ? cpu : cpu.contiguous();
                TensorBytes.WriteTo(contiguous, stream);
            }
        });
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> into <paramref name="directory"/> as Hugging Face does: a single
    /// <c>model.safetensors</c> when the total fits <paramref name="maxShardBytes"/>, otherwise shards
    /// <c>model-00001-of-0000N.safetensors</c> (filled in order, a new shard started when the next tensor would pass
    /// the limit; a tensor larger than the limit gets a shard of its own) and <c>model.safetensors.index.json</c>
    /// (<c>metadata.total_size</c> and <c>weight_map</c>). <paramref name="metadata"/> goes into every file's header.
    /// Weight files left from an earlier save in the other layout (<c>model.safetensors</c>, the index, or
    /// <c>model-NNNNN-of-NNNNN.safetensors</c> shards not written now) are deleted, so the folder has one checkpoint.
    /// </summary>
    /// <returns>The paths written, shards first, then the index.</returns>
    public static IReadOnlyList<string> WriteSharded(string directory, IReadOnlyList<(string Name, Tensor Tensor)> tensors, long maxShardBytes,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(tensors);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxShardBytes);
        var entries = Describe(tensors);
        string dir = Path.GetFullPath(directory);
        Directory.CreateDirectory(dir);

        var shards = new List<List<int>>();
        long current = 0;
        long total = 0;
        for (int i = 0; i < entries.Count; i++)
        {
            long bytes = entries[i].Bytes;
            total += bytes;
            if (shards.Count == 0 || shards[^1].Count > 0 && current + bytes > maxShardBytes)
            {
                shards.Add([]);
                current = 0;
            }
            shards[^1].Add(i);
            current += bytes;
        }

        var written = new List<string>();
        if (shards.Count <= 1)
        {
            string single = Path.Combine(dir, CheckpointReader.SingleFileName);
            Write(single, tensors, metadata);
            written.Add(single);
            DeleteStale(dir, keep: written);
            return written;
        }

        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (int s = 0; s < shards.Count; s++)
        {
            string name = $"model-{s + 1:D5}-of-{shards.Count:D5}.safetensors";
            string path = Path.Combine(dir, name);
            Write(path, shards[s].Select(i => tensors[i]).ToArray(), metadata);
            written.Add(path);
            foreach (int i in shards[s])
            {
                weightMap[entries[i].Name] = name;
            }
        }

        string index = Path.Combine(dir, CheckpointReader.IndexFileName);
        AtomicFile.Write(index, stream =>
        {
            using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
            json.WriteStartObject();
            json.WriteStartObject("metadata");
            json.WriteNumber("total_size", total);
            json.WriteEndObject();
            json.WriteStartObject("weight_map");
            foreach (var (tensor, shard) in weightMap)
            {
                json.WriteString(tensor, shard);
            }
            json.WriteEndObject();
            json.WriteEndObject();
            json.Flush();
            stream.WriteByte((byte)'\n');
        });
        written.Add(index);
        DeleteStale(dir, keep: written);
        return written;
    }

    sealed record Entry(string Name, SafetensorsDtype Dtype, long[] Shape, long Bytes);

    static List<Entry> Describe(IReadOnlyList<(string Name, Tensor Tensor)> tensors)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var entries = new List<Entry>(tensors.Count);
        foreach (var (name, tensor) in tensors)
        {
            if (string.IsNullOrEmpty(name)) throw new ArgumentException("A tensor name is null or empty.", nameof(tensors));
            if (name == "__metadata__") throw new ArgumentException("'__metadata__' is reserved for the header's metadata; it cannot name a tensor.", nameof(tensors));
            if (!seen.Add(name)) throw new ArgumentException($"Tensor '{name}' is listed twice.", nameof(tensors));
            ArgumentNullException.ThrowIfNull(tensor);
            var dtype = SafetensorsDtypes.FromScalarType(tensor.dtype);
            entries.Add(new Entry(name, dtype, tensor.shape, tensor.NumberOfElements * dtype.ElementSize()));
        }
        return entries;
    }

    static Dictionary<string, string> WithFormat(IReadOnlyDictionary<string, string>? metadata)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        if (metadata is not null)
        {
            foreach (var (k, v) in metadata)
            {
                ArgumentNullException.ThrowIfNull(k);
                result[k] = v ?? throw new ArgumentException($"Metadata value for '{k}' is null.", nameof(metadata));
            }
        }
        result.TryAdd(FormatKey, "pt");
        return result;
    }

    static byte[] BuildHeader(List<Entry> entries, Dictionary<string, string> metadata)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                json.WriteString(k, v);
            }
            json.WriteEndObject();
            long offset = 0;
            foreach (var e in entries)
            {
                json.WriteStartObject(e.Name);
                json.WriteString("dtype", e.Dtype.ToString());
                json.WriteStartArray("shape");
                foreach (long d in e.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + e.Bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += e.Bytes;
            }
            json.WriteEndObject();
        }
        int padded = (buffer.WrittenCount + 7) / 8 * 8;
        var header = new byte[padded];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }

    static void DeleteStale(string dir, IReadOnlyList<string> keep)
    {
        var candidates = new List<string>();
        candidates.Add(Path.Combine(dir, CheckpointReader.SingleFileName));
        candidates.Add(Path.Combine(dir, CheckpointReader.IndexFileName));
        candidates.AddRange(Directory.EnumerateFiles(dir, "model-*-of-*.safetensors").Where(f => ShardName().IsMatch(Path.GetFileName(f))));
        foreach (var f in candidates)
        {
            if (!keep.Contains(f, StringComparer.Ordinal) && File.Exists(f))
            {
                File.Delete(f);
            }
        }
    }

    [GeneratedRegex(@"^model-\d{5}-of-\d{5}\.safetensors$")]
    private static partial Regex ShardName();
}
