using System.Diagnostics.CodeAnalysis;
using System.IO.MemoryMappedFiles;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Checkpoints;

/// <summary>
/// One safetensors file, opened read-only through a memory mapping: the header is parsed and strictly validated
/// when the file is opened (see <see cref="Open"/>), and each tensor's bytes are copied from the mapping only
/// when it is loaded. The file is never read whole into managed memory.
/// </summary>
/// <remarks>
/// Loading is thread-safe; <see cref="Dispose"/> must not race with loads. Keep the file unchanged while it is
/// open: the mapping reads it in place.
/// </remarks>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>The largest header accepted, as in huggingface/safetensors (100 MB).</summary>
    public const long MaxHeaderLength = SafetensorsHeader.MaxHeaderLength;

    readonly MemoryMappedFile _map;
    readonly MemoryMappedViewAccessor _view;
    readonly Dictionary<string, TensorInfo> _byName;
    byte* _base;

    SafetensorsFile(string path, long length, long headerLength, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* basePointer,
        SafetensorsHeader.Parsed parsed)
    {
        Path = path;
        FileLength = length;
        HeaderLength = headerLength;
        _map = map;
        _view = view;
        _base = basePointer;
        Metadata = parsed.Metadata;
        Tensors = parsed.Tensors;
        _byName = new Dictionary<string, TensorInfo>(parsed.Tensors.Count, StringComparer.Ordinal);
        foreach (var t in parsed.Tensors)
        {
            _byName.Add(t.Name, t);
        }
    }

    /// <summary>The path the file was opened with; every error message starts with it.</summary>
    public string Path { get; }

    /// <summary>The file's length in bytes.</summary>
    public long FileLength { get; }

    /// <summary>N, the JSON header's length in bytes (the data buffer starts at 8 + N).</summary>
    public long HeaderLength { get; }

    /// <summary>The header's <c>__metadata__</c> map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The tensors in the order of their bytes in the file.</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>The tensor names, in file order.</summary>
    public IEnumerable<string> Names => Tensors.Select(t => t.Name);

    /// <summary>
    /// Opens and validates <paramref name="path"/>. Throws <see cref="CheckpointException"/>, with a message that starts
    /// with the path and says what is wrong, when the file is missing, unreadable or not a valid safetensors file:
    /// header length past the end of the file or over 100 MB, invalid UTF-8 or JSON, a header that is not an object,
    /// <c>__metadata__</c> that is not a string map, duplicate or unknown fields, unknown dtypes, shapes that are not
    /// arrays of non-negative integers or whose byte count overflows, data_offsets that do not match the shape,
    /// overlap, leave gaps, or do not end exactly at the end of the file.
    /// </summary>
    public static SafetensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, bufferSize: 1, FileOptions.RandomAccess);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            throw new CheckpointException($"{path}: cannot open the file: {ex.Message}", ex);
        }

        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        byte* basePointer = null;
        try
        {
            long length = stream.Length;
            if (length < 8)
            {
                SafetensorsHeader.CheckLength(path, default, length); // throws
            }
            map = MemoryMappedFile.CreateFromFile(stream, mapName: null, capacity: 0, MemoryMappedFileAccess.Read,
                HandleInheritability.None, leaveOpen: false);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePointer);
            basePointer += view.PointerOffset;

            long headerLength = SafetensorsHeader.CheckLength(path, new ReadOnlySpan<byte>(basePointer, 8), length);
            var parsed = SafetensorsHeader.Parse(path, new ReadOnlySpan<byte>(basePointer + 8, (int)headerLength), length);
            return new SafetensorsFile(path, length, headerLength, map, view, basePointer, parsed);
        }
        catch (Exception ex)
        {
            if (basePointer != null)
            {
                view!.SafeMemoryMappedViewHandle.ReleasePointer();
            }
            view?.Dispose();
            if (map is not null) map.Dispose(); else stream.Dispose();
            if (ex is CheckpointException) throw;
            if (ex is IOException or UnauthorizedAccessException)
            {
                throw new CheckpointException($"{path}: cannot map the file: {ex.Message}", ex);
            }
            throw;
        }
    }

    /// <summary>True when the file holds a tensor of that name.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The named tensor's entry, or false when the file has none.</summary>
    public bool TryGetInfo(string name, [NotNullWhen(true)] out TensorInfo? info) => _byName.TryGetValue(name, out info);

    /// <summary>The named tensor's entry.</summary>
    /// <exception cref="CheckpointException">The file has no tensor of that name.</exception>
    public TensorInfo Info(string name) =>
        _byName.TryGetValue(name, out var info) ? info : throw new CheckpointException($"{Path}: no tensor named '{name}'");

    /// <summary>
    /// Copies the named tensor out of the mapping into a new CPU tensor of its stored dtype, then converts it to
    /// <paramref name="dtype"/> and moves it to <paramref name="device"/> when those are given. The caller owns the result.
    /// </summary>
    /// <exception cref="CheckpointException">No such tensor, or its dtype (U16, U32, U64, F8_*) has no TorchSharp type.</exception>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null) => Load(Info(name), dtype, device);

    /// <summary>Loads the tensor described by <paramref name="info"/>, which must come from this file.</summary>
    /// <inheritdoc cref="Load(string, ScalarType?, Device?)"/>
    public Tensor Load(TensorInfo info, ScalarType? dtype = null, Device? device = null) =>
        Load(info, dtype, device, TensorBytes.DefaultChunkBytes);

    internal Tensor Load(TensorInfo info, ScalarType? dtype, Device? device, long chunkBytes)
    {
        ArgumentNullException.ThrowIfNull(info);
        if (!_byName.TryGetValue(info.Name, out var own) || !ReferenceEquals(own, info))
        {
            throw new ArgumentException($"Tensor '{info.Name}' is not an entry of {Path}.", nameof(info));
        }
        if (!info.Dtype.TryGetScalarType(out var stored))
        {
            throw new CheckpointException(
                $"{Path}: tensor '{info.Name}' is stored as {info.Dtype}, which TorchSharp cannot hold " +
                $"(loadable dtypes: {string.Join(", ", SafetensorsDtypes.Loadable)}); convert the checkpoint to one of those");
        }
        byte* data = _base;
        ObjectDisposedException.ThrowIf(data == null, this);

        using var scope = torch.NewDisposeScope();
        var cpu = torch.empty(info.ShapeArray(), stored, torch.CPU);
        TensorBytes.CopyInto(cpu, data + info.FileOffset, info.ByteLength, chunkBytes);
        var target = dtype ?? stored;
        var result = target != stored || (device is not null && device.type != DeviceType.CPU)
            ? cpu.to(target, device ?? torch.CPU)
            : cpu;
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>Releases the mapping and the file.</summary>
    public void Dispose()
    {
        if (_base == null)
        {
            return;
        }
        _base = null;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Path} ({Tensors.Count} tensors)";
}
