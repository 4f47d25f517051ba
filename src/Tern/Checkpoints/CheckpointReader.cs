using System.Text.Json;
using static TorchSharp.torch;

namespace Tern.Checkpoints;

/// <summary>
/// The weights of a Hugging Face model folder: <c>model.safetensors</c>, or <c>model.safetensors.index.json</c> and
/// the shards it names, or a lone <c>*.safetensors</c> file. Pickle checkpoints (<c>pytorch_model.bin</c>,
/// <c>*.pt</c>, ...) are never read: unpickling can run arbitrary code.
/// </summary>
public sealed class CheckpointReader : IWeightSource
{
    /// <summary>The single-file weights name.</summary>
    public const string SingleFileName = "model.safetensors";

    /// <summary>The index of a sharded checkpoint.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>Index files larger than this are refused (real ones are kilobytes).</summary>
    const long MaxIndexBytes = 64L << 20;

    static readonly string[] PickleExtensions = [".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"];

    readonly IReadOnlyList<SafetensorsFile> _files;
    readonly Dictionary<string, (SafetensorsFile File, TensorInfo Info)> _tensors;
    bool _disposed;

    CheckpointReader(string directory, string description, string? indexPath, IReadOnlyList<SafetensorsFile> files,
        Dictionary<string, (SafetensorsFile, TensorInfo)> tensors)
    {
        Directory = directory;
        Description = description;
        IndexPath = indexPath;
        _files = files;
        _tensors = tensors;
        Names = tensors.Keys.Order(StringComparer.Ordinal).ToArray();
    }

    /// <summary>The model folder, as a full path.</summary>
    public string Directory { get; }

    /// <summary>Where the weights come from, e.g. "model.safetensors in /models/x".</summary>
    public string Description { get; }

    /// <summary>The index file for a sharded checkpoint; null otherwise.</summary>
    public string? IndexPath { get; }

    /// <summary>The safetensors files opened (one, or each shard once).</summary>
    public IReadOnlyList<SafetensorsFile> Files => _files;

    /// <summary>All tensor names, sorted ordinally. For a sharded checkpoint these are the index's <c>weight_map</c> keys.</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>
    /// Opens the weights in <paramref name="modelDirectory"/>, choosing, in order: <c>model.safetensors</c>;
    /// <c>model.safetensors.index.json</c> (every shard it names must exist inside the folder and hold the tensors
    /// the index puts in it); the only <c>*.safetensors</c> file in the folder. Every file's header is validated.
    /// </summary>
    /// <exception cref="CheckpointException">
    /// The folder is missing, holds no weights, holds only pickle files, holds several safetensors files without an
    /// index, or a file or the index is invalid. The message names the file and the fix.
    /// </exception>
    public static CheckpointReader Open(string modelDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelDirectory);
        string dir = System.IO.Path.GetFullPath(modelDirectory);
        if (!System.IO.Directory.Exists(dir))
        {
            throw new CheckpointException(File.Exists(dir)
                ? $"{dir}: is a file; pass the model folder that holds config.json and the weights"
                : $"{dir}: model folder not found");
        }

        string single = System.IO.Path.Combine(dir, SingleFileName);
        if (File.Exists(single))
        {
            return OpenSingle(dir, single);
        }
        string index = System.IO.Path.Combine(dir, IndexFileName);
        if (File.Exists(index))
        {
            return OpenSharded(dir, index);
        }

        var safetensors = System.IO.Directory.EnumerateFiles(dir, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        if (safetensors.Length == 1)
        {
            return OpenSingle(dir, safetensors[0]);
        }
        if (safetensors.Length > 1)
        {
            throw new CheckpointException(
                $"{dir}: found {safetensors.Length} .safetensors files ({ListNames(safetensors)}) but neither {SingleFileName} nor " +
                $"{IndexFileName} to say which holds the model's tensors; add the index that came with the checkpoint");
        }

        var pickles = System.IO.Directory.EnumerateFiles(dir)
            .Where(f => PickleExtensions.Contains(System.IO.Path.GetExtension(f), StringComparer.OrdinalIgnoreCase))
            .Order(StringComparer.Ordinal).ToArray();
        if (pickles.Length > 0)
        {
            throw new CheckpointException(
                $"{dir}: the weights are only in pickle files ({ListNames(pickles)}), which Tern never reads: unpickling can run arbitrary code. " +
                "Convert them to safetensors once, in a Python environment you trust, e.g. " +
                $"python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('{dir}').save_pretrained('OUT', safe_serialization=True)\" " +
                "and open OUT (copy the tokenizer files too), or download the model's .safetensors files if the hub has them");
        }

        throw new CheckpointException(
            $"{dir}: no model weights found: expected {SingleFileName}, or {IndexFileName} with its shards " +
            "(download them with the model, e.g. huggingface-cli download MODEL --include '*.safetensors' '*.json')");
    }

    static CheckpointReader OpenSingle(string dir, string path)
    {
        var file = SafetensorsFile.Open(path);
        var tensors = new Dictionary<string, (SafetensorsFile, TensorInfo)>(file.Tensors.Count, StringComparer.Ordinal);
        foreach (var t in file.Tensors)
        {
            tensors.Add(t.Name, (file, t));
        }
        return new CheckpointReader(dir, $"{System.IO.Path.GetFileName(path)} in {dir}", null, [file], tensors);
    }

    static CheckpointReader OpenSharded(string dir, string indexPath)
    {
        var weightMap = ReadWeightMap(indexPath);
        if (weightMap.Count == 0)
        {
            throw new CheckpointException($"{indexPath}: weight_map is empty");
        }

        string root = dir.EndsWith(System.IO.Path.DirectorySeparatorChar) ? dir : dir + System.IO.Path.DirectorySeparatorChar;
        var shardPaths = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (tensor, shard) in weightMap)
        {
            if (shardPaths.ContainsKey(shard))
            {
                continue;
            }
            if (shard.Length == 0 || System.IO.Path.IsPathRooted(shard) || shard.Contains('\0'))
            {
                throw new CheckpointException($"{indexPath}: weight_map puts tensor '{tensor}' in '{shard}', which is not a file name inside the model folder");
            }
            string full = System.IO.Path.GetFullPath(System.IO.Path.Combine(dir, shard));
            if (!full.StartsWith(root, StringComparison.Ordinal))
            {
                throw new CheckpointException($"{indexPath}: weight_map puts tensor '{tensor}' in '{shard}', which is outside the model folder {dir}");
            }
            if (!File.Exists(full))
            {
                int count = weightMap.Count(kv => kv.Value == shard);
                throw new CheckpointException(
                    $"{indexPath}: weight_map puts {count} tensor(s) (e.g. '{tensor}') in shard '{shard}', but {full} does not exist; " +
                    "download every shard the index lists");
            }
            shardPaths.Add(shard, full);
        }

        var opened = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        try
        {
            foreach (var (shard, full) in shardPaths.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                opened.Add(shard, SafetensorsFile.Open(full));
            }
            var tensors = new Dictionary<string, (SafetensorsFile, TensorInfo)>(weightMap.Count, StringComparer.Ordinal);
            foreach (var (tensor, shard) in weightMap)
            {
                var file = opened[shard];
                if (!file.TryGetInfo(tensor, out var info))
                {
                    throw new CheckpointException($"{indexPath}: weight_map puts tensor '{tensor}' in '{shard}', but {file.Path} has no tensor of that name");
                }
                tensors.Add(tensor, (file, info));
            }
            var files = opened.Values.ToArray();
            return new CheckpointReader(dir, $"{IndexFileName} ({files.Length} shard{(files.Length == 1 ? "" : "s")}) in {dir}", indexPath, files, tensors);
        }
        catch
        {
            foreach (var f in opened.Values)
            {
                f.Dispose();
            }
            throw;
        }
    }

    /// <summary>Reads and checks <c>weight_map</c>: a JSON object of tensor name to shard file name, no duplicates, its text
    /// Unicode; every failure names the index file.</summary>
    static List<KeyValuePair<string, string>> ReadWeightMap(string indexPath)
    {
        byte[] bytes;
        try
        {
            long length = new FileInfo(indexPath).Length;
            if (length > MaxIndexBytes)
            {
                throw new CheckpointException($"{indexPath}: the index is {length} bytes, over the {MaxIndexBytes}-byte limit; it is not a safetensors index");
            }
            bytes = File.ReadAllBytes(indexPath);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointException($"{indexPath}: cannot read the index: {ex.Message}", ex);
        }

        var result = new List<KeyValuePair<string, string>>();
        try
        {
            using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Disallow });
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointException($"{indexPath}: the index is not a JSON object");
            }
            JsonElement? map = null;
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.NameEquals("weight_map"))
                {
                    if (map is not null) throw new CheckpointException($"{indexPath}: the index has two weight_map entries");
                    map = p.Value;
                }
            }
            if (map is not { } m)
            {
                throw new CheckpointException($"{indexPath}: the index has no weight_map");
            }
            if (m.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointException($"{indexPath}: weight_map must be an object mapping tensor names to shard files, not {m.ValueKind}");
            }
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in m.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                {
                    throw new CheckpointException($"{indexPath}: weight_map entry '{p.Name}' must be a shard file name, not {p.Value.ValueKind}");
                }
                if (!seen.Add(p.Name))
                {
                    throw new CheckpointException($"{indexPath}: weight_map lists tensor '{p.Name}' twice");
                }
                result.Add(new(p.Name, p.Value.GetString()!));
            }
        }
        catch (JsonException ex)
        {
            throw new CheckpointException($"{indexPath}: the index is not valid JSON: {ex.Message}", ex);
        }
        catch (InvalidOperationException ex)
        {
            // The reader checks structure, not the text of names and strings: invalid UTF-8 bytes or a lone surrogate escape
            // only fail when a name or value is read, without the file.
            throw new CheckpointException($"{indexPath}: the index holds text that is not valid UTF-8 (invalid bytes, or a lone surrogate " +
                $"such as \\ud800): {ex.Message}", ex);
        }
        return result;
    }

    /// <inheritdoc/>
    public bool Contains(string name) => _tensors.ContainsKey(name);

    /// <summary>The named tensor's entry (dtype, shape, file, byte range).</summary>
    /// <exception cref="CheckpointException">The checkpoint has no tensor of that name.</exception>
    public TensorInfo Info(string name) => Find(name).Info;

    /// <summary>
    /// Loads the named tensor as <paramref name="dtype"/> on <paramref name="device"/> after checking that its stored
    /// shape is <paramref name="expectedShape"/>. The caller owns the result.
    /// </summary>
    /// <exception cref="CheckpointException">The tensor is missing, its shape differs (the message names the tensor, file,
    /// stored and expected shapes), or its stored dtype has no TorchSharp type.</exception>
    public Tensor Load(string name, long[] expectedShape, ScalarType dtype, Device device)
    {
        ArgumentNullException.ThrowIfNull(expectedShape);
        var (file, info) = Find(name);
        if (!info.Shape.SequenceEqual(expectedShape))
        {
            throw new CheckpointException(
                $"{info.FilePath}: tensor '{name}' has shape {info.ShapeText} ({info.Dtype}) but the model expects {TensorInfo.FormatShape(expectedShape)}; " +
                "does config.json belong to these weights?");
        }
        return file.Load(info, dtype, device);
    }

    /// <summary>Loads the named tensor with its stored shape, converted to <paramref name="dtype"/> and moved to
    /// <paramref name="device"/> when given (stored dtype on the CPU otherwise). The caller owns the result.</summary>
    /// <exception cref="CheckpointException">The tensor is missing or its stored dtype has no TorchSharp type.</exception>
    public Tensor LoadAsStored(string name, ScalarType? dtype = null, Device? device = null)
    {
        var (file, info) = Find(name);
        return file.Load(info, dtype, device);
    }

    (SafetensorsFile File, TensorInfo Info) Find(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_tensors.TryGetValue(name, out var entry))
        {
            return entry;
        }
        var similar = Names.Where(n => n.EndsWith("." + name, StringComparison.Ordinal) || name.EndsWith("." + n, StringComparison.Ordinal))
            .Take(3).ToArray();
        string hint = similar.Length > 0 ? $" (similar: {string.Join(", ", similar.Select(s => $"'{s}'"))})" : "";
        throw new CheckpointException($"{Description}: no tensor named '{name}'{hint}");
    }

    /// <summary>Releases every file's mapping.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        foreach (var f in _files)
        {
            f.Dispose();
        }
    }

    static string ListNames(IReadOnlyList<string> paths)
    {
        var names = paths.Take(5).Select(System.IO.Path.GetFileName);
        return string.Join(", ", names) + (paths.Count > 5 ? $", and {paths.Count - 5} more" : "");
    }
}
