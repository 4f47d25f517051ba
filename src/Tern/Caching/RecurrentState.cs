using static TorchSharp.torch;

namespace Tern.Caching;

/// <summary>One tensor of a recurrent layer's per-sequence state: its name ("layers.3.fir"), its shape for one sequence and
/// its type. Zero is the state of a sequence that has seen nothing.</summary>
public sealed record RecurrentTensor(string Name, long[] RowShape, ScalarType DType);

/// <summary>
/// The fixed-size per-sequence state of a model's recurrent layers (a Hyena layer's short-convolution tail and modal state):
/// one preallocated tensor [batch, …] per <see cref="RecurrentTensor"/>, row b holding sequence b, zero for a sequence that has
/// seen nothing. It lives in the <see cref="KvCache"/> next to the KV layers and follows the cache's row operations (serving's
/// moves, imports, emptying and resizing), so the code that steps and pools rows never knows a layer is recurrent. Layers
/// update it in place (a CUDA graph captures the same tensors every step).
/// </summary>
public sealed class RecurrentState : IDisposable
{
    readonly Dictionary<string, Tensor> tensors = new(StringComparer.Ordinal);

    internal RecurrentState(IReadOnlyList<RecurrentTensor> layout, int batchSize, Device device)
    {
        Layout = layout;
        foreach (var t in layout)
            tensors.Add(t.Name, zeros(new[] { (long)batchSize }.Concat(t.RowShape).ToArray(), t.DType, device).DetachFromDisposeScope());
        Rows = batchSize;
    }

    /// <summary>The tensors, by name.</summary>
    public IReadOnlyList<RecurrentTensor> Layout { get; }

    /// <summary>Rows the steps run over: [0, Rows) (<see cref="KvCache.ActiveRows"/>).</summary>
    public int Rows { get; internal set; }

    /// <summary>The state called <paramref name="name"/> of rows [0, <see cref="Rows"/>), a view to update in place.</summary>
    public Tensor this[string name]
    {
        get
        {
            var all = tensors.TryGetValue(name, out var t) ? t : throw new KeyNotFoundException($"the recurrent state has no tensor '{name}'.");
            return Rows == all.size(0) ? all : all.narrow(0, 0, Rows);
        }
    }

    /// <summary>Bytes held over every row.</summary>
    public long Bytes => tensors.Values.Sum(t => t.NumberOfElements * t.ElementSize);

    /// <summary>Rows [row, row + rows) become a copy of <paramref name="source"/>'s rows [sourceRow, sourceRow + rows) (same layout;
    /// a one-row source fills every row).</summary>
    internal void ImportRows(int row, RecurrentState source, int sourceRow, int rows)
    {
        foreach (var (name, t) in tensors)
            using (var into = t.narrow(0, row, rows))
            using (var from = source.tensors[name].narrow(0, sourceRow, source.tensors[name].size(0) == 1 ? 1 : rows))
                into.copy_(from);
    }

    /// <summary>Moves row <paramref name="from"/> into row <paramref name="to"/> and empties row <paramref name="from"/>.</summary>
    internal void MoveRow(int from, int to)
    {
        ImportRows(to, this, from, 1);
        EmptyRows(from, 1);
    }

    /// <summary>Rows [row, row + rows) become the state of sequences that have seen nothing.</summary>
    internal void EmptyRows(int row, int rows)
    {
        foreach (var t in tensors.Values)
            using (var r = t.narrow(0, row, rows))
                r.zero_();
    }

    /// <summary>Copies rows [0, source.Rows) of <paramref name="source"/> into this state and uses that many rows.</summary>
    internal void CopyFrom(RecurrentState source)
    {
        Rows = source.Rows;
        ImportRows(0, source, 0, Rows);
    }

    /// <summary>Every row becomes empty, in place.</summary>
    public void Clear()
    {
        foreach (var t in tensors.Values) t.zero_();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var t in tensors.Values) t.Dispose();
    }
}
