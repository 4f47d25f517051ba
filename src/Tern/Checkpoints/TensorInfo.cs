namespace Tern.Checkpoints;

/// <summary>One tensor's entry in a safetensors header, already validated against its file.</summary>
public sealed record TensorInfo
{
    /// <summary>The tensor's name (its key in the header).</summary>
    public required string Name { get; init; }

    /// <summary>The stored element type.</summary>
    public required SafetensorsDtype Dtype { get; init; }

    /// <summary>The stored shape (empty for a scalar).</summary>
    public required IReadOnlyList<long> Shape { get; init; }

    /// <summary>Start of the tensor's bytes, relative to the data buffer (the header's <c>data_offsets[0]</c>).</summary>
    public required long DataBegin { get; init; }

    /// <summary>End (exclusive) of the tensor's bytes, relative to the data buffer (the header's <c>data_offsets[1]</c>).</summary>
    public required long DataEnd { get; init; }

    /// <summary>The file that holds the tensor.</summary>
    public required string FilePath { get; init; }

    /// <summary>Absolute position in the file of the tensor's first byte (8 + header length + <see cref="DataBegin"/>).</summary>
    public required long FileOffset { get; init; }

    /// <summary>Number of bytes the tensor occupies.</summary>
    public long ByteLength => DataEnd - DataBegin;

    /// <summary>Number of elements (1 for a scalar).</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Shape) n *= d; // validated not to overflow when the file was opened
            return n;
        }
    }

    /// <summary>The shape as a new array, ready for TorchSharp calls.</summary>
    public long[] ShapeArray() => Shape.ToArray();

    /// <summary>The shape as the header writes it, e.g. <c>[4, 32]</c>.</summary>
    public string ShapeText => FormatShape(Shape);

    internal static string FormatShape(IEnumerable<long> shape) => "[" + string.Join(", ", shape) + "]";
}
