using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// The weights of one part of a model — the embedding, a decoder layer or the head — under their checkpoint names relative
/// to the part's prefix ("input_layernorm.weight"). Fused tensors take vLLM's names ("self_attn.qkv_proj.weight" for q|k|v,
/// "mlp.gate_up_proj.weight" for gate|up). An architecture states its weights once, when it loads them; running, disposal,
/// placement and offloading go through this list, so they are generic.
/// </summary>
internal sealed class PartWeights
{
    readonly List<string> names = new();
    readonly List<Tensor> tensors = new();
    readonly Dictionary<string, int> index = new(StringComparer.Ordinal);

    /// <param name="prefix">The checkpoint prefix of the part ("model.layers.3."), for messages and export.</param>
    public PartWeights(string prefix) => Prefix = prefix;

    /// <summary>The checkpoint prefix of the part.</summary>
    public string Prefix { get; }

    /// <summary>Relative names, in load order.</summary>
    public IReadOnlyList<string> Names => names;

    /// <summary>The tensors, in <see cref="Names"/>' order.</summary>
    public IReadOnlyList<Tensor> Tensors => tensors;

    /// <summary>Registers <paramref name="tensor"/> under <paramref name="name"/>; returns it.</summary>
    public Tensor Add(string name, Tensor tensor)
    {
        if (!index.TryAdd(name, names.Count)) throw new InvalidOperationException($"weight '{Prefix}{name}' is registered twice.");
        names.Add(name);
        tensors.Add(tensor);
        return tensor;
    }

    /// <summary>The weight called <paramref name="name"/>.</summary>
    public Tensor this[string name] => index.TryGetValue(name, out int i) ? tensors[i]
        : throw new KeyNotFoundException($"the model part '{Prefix}' has no weight '{name}'.");

    /// <summary>The weight called <paramref name="name"/>, or null when the architecture has none (an absent bias).</summary>
    public Tensor? Optional(string name) => index.TryGetValue(name, out int i) ? tensors[i] : null;

    /// <summary>The linear map stored as <paramref name="name"/>.weight and (optionally) <paramref name="name"/>.bias.</summary>
    public Linear Linear(string name) =>
        new(this[name + ".weight"], Optional(name + ".bias")) { InputObserver = LinearInputs is { } see ? x => see(name, x) : null };

    /// <summary>When set, receives the input of every linear map the part runs densely, with the map's name
    /// ("self_attn.qkv_proj"): how compression calibrates without a hook inside each architecture.</summary>
    public Action<string, Tensor>? LinearInputs { get; init; }

    /// <summary>The factored linear map stored as <paramref name="name"/>.weight_a / .weight_b (and .weight for the original
    /// variant's frozen part, .bias when present), running its first <paramref name="live"/> components.</summary>
    public FactoredLinear Factored(string name, long live) =>
        new(Optional(name + ".weight"), this[name + ".weight_a"], this[name + ".weight_b"], Optional(name + ".bias"), live);

    /// <summary>Puts <paramref name="tensor"/> in the place of the weight called <paramref name="name"/> (a factor resized
    /// at InRank's stage hand-off); returns the tensor it replaced, which the caller owns.</summary>
    public Tensor Replace(string name, Tensor tensor)
    {
        int i = index.TryGetValue(name, out int at) ? at : throw new KeyNotFoundException($"the model part '{Prefix}' has no weight '{name}'.");
        var old = tensors[i];
        tensors[i] = tensor;
        return old;
    }

    /// <summary>The same names over other tensors (e.g. copies loaded on the compute device), in <see cref="Names"/>' order.</summary>
    public PartWeights With(IReadOnlyList<Tensor> others, Action<string, Tensor>? linearInputs = null)
    {
        if (others.Count != tensors.Count)
            throw new ArgumentException($"the model part '{Prefix}' has {tensors.Count} weights; {others.Count} were given.");
        var copy = new PartWeights(Prefix) { LinearInputs = linearInputs };
        for (int i = 0; i < others.Count; i++) copy.Add(names[i], others[i]);
        return copy;
    }
}
