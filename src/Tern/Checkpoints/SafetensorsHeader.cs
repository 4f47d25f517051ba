using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace Tern.Checkpoints;

/// <summary>
/// Parses and strictly validates the JSON header of a safetensors file, following huggingface/safetensors
/// (<c>SafeTensors::read_metadata</c> and <c>Metadata::validate</c> in <c>safetensors/src/tensor.rs</c>): tensors,
/// sorted by offset, must tile the data buffer exactly, starting at 0, without gaps or overlaps, each one's byte
/// range matching its shape and dtype, the last one ending at the end of the file.
/// </summary>
internal static class SafetensorsHeader
{
    /// <summary>The largest header the reference implementation accepts (100 MB).</summary>
    public const long MaxHeaderLength = 100_000_000;

    /// <summary>Shapes of more dimensions are refused (libtorch itself caps tensors at 64 dimensions).</summary>
    public const int MaxRank = 64;

    const string MetadataKey = "__metadata__";

    public sealed record Parsed(IReadOnlyDictionary<string, string> Metadata, IReadOnlyList<TensorInfo> Tensors);

    /// <summary>Checks the 8-byte length prefix against the file's length; returns the header length N.</summary>
    public static long CheckLength(string path, ReadOnlySpan<byte> prefix, long fileLength)
    {
        if (fileLength < 8)
        {
            throw Fail(path, $"the file is {fileLength} bytes, too short for the 8-byte header length that starts a safetensors file (truncated or empty?)");
        }
        ulong n = BitConverter.IsLittleEndian
            ? BitConverter.ToUInt64(prefix[..8])
            : System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (n > MaxHeaderLength)
        {
            throw Fail(path, $"the header length field says {n} bytes, over the {MaxHeaderLength:N0}-byte limit (not a safetensors file, or a corrupt one)");
        }
        if (8 + (long)n > fileLength)
        {
            throw Fail(path, $"the header length field says {n} bytes, which runs past the end of the file: only {fileLength - 8} bytes follow the 8-byte length field (truncated?)");
        }
        return (long)n;
    }

    /// <summary>Parses the header bytes (<paramref name="json"/>, N bytes) of a file of <paramref name="fileLength"/> bytes.</summary>
    public static Parsed Parse(string path, ReadOnlySpan<byte> json, long fileLength)
    {
        long dataStart = 8 + (long)json.Length;
        long dataLength = fileLength - dataStart;
        if (dataLength < 0)
        {
            throw Fail(path, $"the header ({json.Length} bytes) runs past the end of the file ({fileLength} bytes)");
        }
        if (!Utf8.IsValid(json))
        {
            throw Fail(path, $"the header is not valid UTF-8 (first bad byte at header offset {FirstInvalidUtf8(json)})");
        }

        if (json.Trim(" \t\r\n"u8).IsEmpty)
        {
            throw Fail(path, "the header is empty; expected a JSON object");
        }

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var raw = new List<RawEntry>();
        var reader = new Utf8JsonReader(json, new JsonReaderOptions
        {
            CommentHandling = JsonCommentHandling.Disallow,
            AllowTrailingCommas = false,
            MaxDepth = 16,
        });
        try
        {
            if (!reader.Read())
            {
                throw Fail(path, "the header is empty; expected a JSON object");
            }
            if (reader.TokenType != JsonTokenType.StartObject)
            {
                throw Fail(path, $"the header is not a JSON object (it starts with {Describe(ref reader)})");
            }
            var seen = new HashSet<string>(StringComparer.Ordinal);
            bool sawMetadata = false;
            while (true)
            {
                Next(ref reader, path);
                if (reader.TokenType == JsonTokenType.EndObject)
                {
                    break;
                }
                string key = reader.GetString()!;
                Next(ref reader, path);
                if (key == MetadataKey)
                {
                    if (sawMetadata)
                    {
                        throw Fail(path, "the header has two __metadata__ entries");
                    }
                    sawMetadata = true;
                    ReadMetadata(ref reader, path, metadata);
                    continue;
                }
                if (!seen.Add(key))
                {
                    throw Fail(path, $"tensor '{key}' appears twice in the header");
                }
                raw.Add(ReadTensor(ref reader, path, key));
            }
            // Only whitespace (the writer's padding) may follow; anything else makes Read throw.
            if (reader.Read())
            {
                throw Fail(path, "the header has content after its JSON object");
            }
        }
        catch (JsonException ex)
        {
            throw Fail(path, $"the header is not valid JSON: {ex.Message}", ex);
        }
        catch (InvalidOperationException ex)
        {
            throw Fail(path, $"the header is not valid JSON: {ex.Message}", ex);
        }

        return new Parsed(metadata, Validate(path, raw, dataStart, dataLength));
    }

    static void ReadMetadata(ref Utf8JsonReader reader, string path, Dictionary<string, string> metadata)
    {
        if (reader.TokenType == JsonTokenType.Null)
        {
            return;
        }
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw Fail(path, $"__metadata__ must be an object mapping strings to strings, not {Describe(ref reader)}");
        }
        while (true)
        {
            Next(ref reader, path);
            if (reader.TokenType == JsonTokenType.EndObject)
            {
                return;
            }
            string key = reader.GetString()!;
            Next(ref reader, path);
            if (reader.TokenType != JsonTokenType.String)
            {
                throw Fail(path, $"__metadata__ entry '{key}' must be a string, not {Describe(ref reader)}");
            }
            if (!metadata.TryAdd(key, reader.GetString()!))
            {
                throw Fail(path, $"__metadata__ entry '{key}' appears twice");
            }
        }
    }

    static RawEntry ReadTensor(ref Utf8JsonReader reader, string path, string name)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw Fail(path, $"tensor '{name}': expected an object with dtype, shape and data_offsets, found {Describe(ref reader)}");
        }
        string? dtypeText = null;
        List<ulong>? shape = null;
        ulong[]? offsets = null;
        while (true)
        {
            Next(ref reader, path);
            if (reader.TokenType == JsonTokenType.EndObject)
            {
                break;
            }
            string field = reader.GetString()!;
            Next(ref reader, path);
            switch (field)
            {
                case "dtype":
                    if (dtypeText is not null) throw Fail(path, $"tensor '{name}' has two dtype fields");
                    if (reader.TokenType != JsonTokenType.String)
                    {
                        throw Fail(path, $"tensor '{name}' dtype must be a string, not {Describe(ref reader)}");
                    }
                    dtypeText = reader.GetString()!;
                    break;
                case "shape":
                    if (shape is not null) throw Fail(path, $"tensor '{name}' has two shape fields");
                    shape = ReadIntegers(ref reader, path, name, "shape", MaxRank);
                    break;
                case "data_offsets":
                    if (offsets is not null) throw Fail(path, $"tensor '{name}' has two data_offsets fields");
                    var list = ReadIntegers(ref reader, path, name, "data_offsets", 2);
                    if (list.Count != 2)
                    {
                        throw Fail(path, $"tensor '{name}' data_offsets must be [begin, end], found {list.Count} number(s)");
                    }
                    offsets = [list[0], list[1]];
                    break;
                default:
                    throw Fail(path, $"tensor '{name}' has an unknown field '{field}' (expected dtype, shape, data_offsets)");
            }
        }
        if (dtypeText is null) throw Fail(path, $"tensor '{name}' has no dtype");
        if (shape is null) throw Fail(path, $"tensor '{name}' has no shape");
        if (offsets is null) throw Fail(path, $"tensor '{name}' has no data_offsets");
        if (!SafetensorsDtypes.TryParse(dtypeText, out var dtype))
        {
            throw Fail(path, $"tensor '{name}' has unknown dtype '{Truncate(dtypeText)}' (known: {string.Join(", ", SafetensorsDtypes.All)})");
        }
        return new RawEntry(name, dtype, shape, offsets[0], offsets[1]);
    }

    static List<ulong> ReadIntegers(ref Utf8JsonReader reader, string path, string name, string field, int max)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
        {
            throw Fail(path, $"tensor '{name}' {field} must be an array of non-negative integers, not {Describe(ref reader)}");
        }
        var values = new List<ulong>();
        while (true)
        {
            Next(ref reader, path);
            if (reader.TokenType == JsonTokenType.EndArray)
            {
                return values;
            }
            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetUInt64(out ulong value))
            {
                throw Fail(path, $"tensor '{name}' {field} holds {Describe(ref reader)}, not a non-negative integer that fits 64 bits");
            }
            if (values.Count == max)
            {
                throw Fail(path, field == "shape"
                    ? $"tensor '{name}' shape has more than {max} dimensions"
                    : $"tensor '{name}' {field} must be [begin, end], found more than {max} numbers");
            }
            values.Add(value);
        }
    }

    static List<TensorInfo> Validate(string path, List<RawEntry> raw, long dataStart, long dataLength)
    {
        var entries = new List<(RawEntry Raw, long[] Shape, ulong Bytes)>(raw.Count);
        foreach (var e in raw)
        {
            var shape = new long[e.Shape.Count];
            ulong elements = 1;
            bool overflow = false;
            for (int i = 0; i < shape.Length; i++)
            {
                ulong d = e.Shape[i];
                if (d > long.MaxValue)
                {
                    throw Fail(path, $"tensor '{e.Name}' shape {Format(e.Shape)} has a dimension too large for a tensor");
                }
                shape[i] = (long)d;
                ulong hi = Math.BigMul(elements, d, out ulong lo);
                overflow |= hi != 0;
                elements = lo;
            }
            ulong hiBytes = Math.BigMul(elements, (ulong)e.Dtype.ElementSize(), out ulong bytes);
            // Like the reference (checked_mul over the dimensions), any intermediate overflow is an error.
            if (overflow || hiBytes != 0 || bytes > long.MaxValue)
            {
                throw Fail(path, $"tensor '{e.Name}' shape {Format(e.Shape)} of {e.Dtype} is too large: its byte count overflows 64 bits");
            }
            if (e.Begin > e.End)
            {
                throw Fail(path, $"tensor '{e.Name}' data_offsets [{e.Begin}, {e.End}] begin after they end");
            }
            entries.Add((e, shape, bytes));
        }

        entries.Sort((a, b) =>
        {
            int c = a.Raw.Begin.CompareTo(b.Raw.Begin);
            if (c == 0) c = a.Raw.End.CompareTo(b.Raw.End);
            return c != 0 ? c : string.CompareOrdinal(a.Raw.Name, b.Raw.Name);
        });

        var infos = new List<TensorInfo>(entries.Count);
        ulong expected = 0;
        RawEntry? previous = null;
        foreach (var (e, shape, bytes) in entries)
        {
            if (e.Begin < expected)
            {
                throw Fail(path, $"tensor '{e.Name}' data_offsets [{e.Begin}, {e.End}] overlap tensor '{previous!.Name}' [{previous.Begin}, {previous.End}]");
            }
            if (e.Begin > expected)
            {
                throw Fail(path, $"bytes [{expected}, {e.Begin}) of the data buffer belong to no tensor (the gap is before tensor '{e.Name}' [{e.Begin}, {e.End}]); " +
                                 "safetensors requires tensors to cover the data buffer contiguously");
            }
            ulong held = e.End - e.Begin;
            if (held != bytes)
            {
                throw Fail(path, $"tensor '{e.Name}' data_offsets [{e.Begin}, {e.End}] hold {held} bytes but shape {Format(e.Shape)} of {e.Dtype} needs {bytes} bytes");
            }
            if (e.End > (ulong)dataLength)
            {
                throw Fail(path, $"tensor '{e.Name}' data_offsets [{e.Begin}, {e.End}] run past the end of the data buffer, which holds {dataLength} bytes after the header (truncated file?)");
            }
            infos.Add(new TensorInfo
            {
                Name = e.Name,
                Dtype = e.Dtype,
                Shape = shape,
                DataBegin = (long)e.Begin,
                DataEnd = (long)e.End,
                FilePath = path,
                FileOffset = dataStart + (long)e.Begin,
            });
            expected = e.End;
            previous = e;
        }
        if (expected != (ulong)dataLength)
        {
            throw Fail(path, $"the data buffer holds {dataLength} bytes after the header but the tensors cover only {expected}: " +
                             $"{(ulong)dataLength - expected} trailing bytes belong to no tensor");
        }
        return infos;
    }

    static void Next(ref Utf8JsonReader reader, string path)
    {
        if (!reader.Read())
        {
            throw Fail(path, "the header's JSON ends before its object closes");
        }
    }

    static string Describe(ref Utf8JsonReader reader) => reader.TokenType switch
    {
        JsonTokenType.StartObject => "an object",
        JsonTokenType.StartArray => "an array",
        JsonTokenType.String => $"the string \"{Truncate(reader.GetString())}\"",
        JsonTokenType.Number => $"the number {Truncate(Encoding.UTF8.GetString(reader.ValueSpan))}",
        JsonTokenType.True => "true",
        JsonTokenType.False => "false",
        JsonTokenType.Null => "null",
        var t => t.ToString(),
    };

    static string Truncate(string? s) => s is null ? "" : s.Length <= 40 ? s : s[..40] + "...";

    static string Format(IEnumerable<ulong> shape) => "[" + string.Join(", ", shape) + "]";

    static long FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        int i = 0;
        while (i < bytes.Length)
        {
            if (System.Text.Rune.DecodeFromUtf8(bytes[i..], out _, out int consumed) != System.Buffers.OperationStatus.Done)
            {
                return i;
            }
            i += consumed;
        }
        return i;
    }

    internal static CheckpointException Fail(string path, string what, Exception? inner = null) =>
        inner is null ? new CheckpointException($"{path}: {what}") : new CheckpointException($"{path}: {what}", inner);

    sealed record RawEntry(string Name, SafetensorsDtype Dtype, List<ulong> Shape, ulong Begin, ulong End);
}
