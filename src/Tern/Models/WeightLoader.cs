using Tern.Checkpoints;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>Loads a model's parameters by their Hugging Face names, converted to the compute dtype and device, and counts them.</summary>
internal sealed class WeightLoader
{
    readonly IWeightSource source;
    readonly string[] optionalPrefixes;

    /// <param name="optionalPrefixes">Leading name parts some published checkpoints omit (GPT-2's "transformer.", OPT's "model.").</param>
    public WeightLoader(IWeightSource source, ScalarType dtype, Device device, params string[] optionalPrefixes)
        : this(source, dtype, device, trainable: false, optionalPrefixes) { }

    /// <param name="trainable">When true every tensor is created as a <see cref="Parameter"/> (requires_grad off until a
    /// trainer turns it on) and recorded in <see cref="Parameters"/>: TorchSharp's optimizers and clip_grad_norm_ take
    /// Parameters, and wrapping at creation is the only moment the handle can be moved into one.</param>
    public WeightLoader(IWeightSource source, ScalarType dtype, Device device, bool trainable, params string[] optionalPrefixes)
        : this(source, dtype, device, device, trainable, optionalPrefixes) { }

    /// <param name="weightDevice">Where the weights are loaded when it differs from the compute <paramref name="device"/> (an
    /// offloaded model loads them on the CPU and places them by its policy afterwards).</param>
    public WeightLoader(IWeightSource source, ScalarType dtype, Device device, Device weightDevice, bool trainable, params string[] optionalPrefixes)
    {
        WeightDevice = weightDevice;
        Trainable = trainable;
        this.source = source;
        this.optionalPrefixes = optionalPrefixes;
        DType = dtype;
        Device = device;
    }

    public ScalarType DType { get; }
    /// <summary>The compute device (rotary tables and other per-model buffers live here).</summary>
    public Device Device { get; }
    /// <summary>Where the weights are loaded.</summary>
    public Device WeightDevice { get; }
    public long ParameterCount { get; private set; }
    public IWeightSource Source => source;
    public bool Trainable { get; }

    /// <summary>Where the fraction of the weights loaded goes (null: nowhere).</summary>
    public LoadProgress? Progress { get; init; }

    void Count(Tensor tensor)
    {
        ParameterCount += tensor.NumberOfElements;
        Progress?.Report(ParameterCount);
    }

    /// <summary>Every tensor handed out so far, in load order (fused tensors once, under their parts' names).</summary>
    public List<ModelParameter> Parameters { get; } = new();

    Tensor Track(Tensor tensor, string name, IReadOnlyList<ParameterPart>? parts = null, bool transposed = false)
    {
        if (!Trainable) return tensor;
        var parameter = (Parameter)new Parameter(tensor, requires_grad: false).DetachFromDisposeScope();
        Parameters.Add(new ModelParameter(name, parameter, parts ?? new[] { new ParameterPart(name, parameter.size(0)) }) { Transposed = transposed });
        return parameter;
    }

    string? Resolve(string name)
    {
        if (source.Contains(name)) return name;
        foreach (string prefix in optionalPrefixes)
            if (name.StartsWith(prefix, StringComparison.Ordinal) && source.Contains(name[prefix.Length..])) return name[prefix.Length..];
        return null;
    }

    public bool Contains(string name) => Resolve(name) is not null;

    public Tensor Get(string name, params long[] shape)
    {
        string resolved = Resolve(name) ?? throw new CheckpointException(
            $"{source.Description}: tensor '{name}' is missing; the config's architecture needs it with shape [{string.Join(", ", shape)}].");
        var tensor = source.Load(resolved, shape, DType, WeightDevice).DetachFromDisposeScope(); // weights live as long as the model
        Count(tensor);
        return Track(tensor, name);
    }

    /// <summary>The tensor stored as [<paramref name="rows"/>, <paramref name="columns"/>] (GPT-2's Conv1D: [in, out]),
    /// transposed once into a contiguous [columns, rows] (a linear map's [out, in]). Trainable: the transposed tensor is the
    /// parameter, and saving transposes it back (<see cref="ModelParameter.Transposed"/>).</summary>
    public Tensor GetTransposed(string name, long rows, long columns)
    {
        string resolved = Resolve(name) ?? throw new CheckpointException(
            $"{source.Description}: tensor '{name}' is missing; the config's architecture needs it with shape [{rows}, {columns}].");
        using var stored = source.Load(resolved, new[] { rows, columns }, DType, WeightDevice);
        var tensor = stored.t().contiguous().DetachFromDisposeScope();
        Count(tensor);
        return Track(tensor, name, transposed: true);
    }

    /// <summary>A loader for the part whose checkpoint names start with <paramref name="prefix"/>.</summary>
    public PartLoader Part(string prefix) => new(this, prefix);

    public Linear Linear(string prefix, long outFeatures, long inFeatures, bool bias) =>
        new(Get(prefix + ".weight", outFeatures, inFeatures), bias ? Get(prefix + ".bias", outFeatures) : null);

    /// <summary>Several linear maps of the same input fused into one (rows concatenated): one GEMM instead of several.</summary>
    public Linear Fused(string[] prefixes, long[] outFeatures, long inFeatures, bool bias)
    {
        int tracked = Parameters.Count;
        var parts = prefixes.Select((p, i) => Linear(p, outFeatures[i], inFeatures, bias)).ToArray();
        if (Trainable) Parameters.RemoveRange(tracked, Parameters.Count - tracked); // the parts are freed below; the fused tensor is the parameter
        var weight = torch.cat(parts.Select(p => p.Weight).ToArray(), 0).DetachFromDisposeScope();
        var b = bias ? torch.cat(parts.Select(p => p.Bias!).ToArray(), 0).DetachFromDisposeScope() : null;
        foreach (var p in parts) p.Dispose();
        weight = Track(weight, string.Join("+", prefixes.Select(p => p + ".weight")),
            prefixes.Select((p, i) => new ParameterPart(p + ".weight", outFeatures[i])).ToArray());
        if (b is not null)
            b = Track(b, string.Join("+", prefixes.Select(p => p + ".bias")),
                prefixes.Select((p, i) => new ParameterPart(p + ".bias", outFeatures[i])).ToArray());
        return new Linear(weight, b);
    }
}

/// <summary>Loads the weights of one model part by names relative to its prefix and registers them in <see cref="Weights"/>:
/// the one place an architecture lists a part's weights.</summary>
internal sealed class PartLoader(WeightLoader loader, string prefix)
{
    /// <summary>The part's weights, as loaded so far.</summary>
    public PartWeights Weights { get; } = new(prefix);

    /// <summary>The underlying loader.</summary>
    public WeightLoader Loader => loader;

    public Tensor Get(string name, params long[] shape) => Weights.Add(name, loader.Get(prefix + name, shape));

    public Linear Linear(string name, long outFeatures, long inFeatures, bool bias) => Add(name, loader.Linear(prefix + name, outFeatures, inFeatures, bias));

    /// <summary>Linear maps of the same input fused by rows (<see cref="WeightLoader.Fused"/>), registered as <paramref name="name"/>.</summary>
    public Linear Fused(string name, string[] parts, long[] outFeatures, long inFeatures, bool bias) =>
        Add(name, loader.Fused(parts.Select(p => prefix + p).ToArray(), outFeatures, inFeatures, bias));

    /// <summary>Loads a factored linear map (<see cref="LowRankLayout"/>): <c>weight_a</c> [width, in], <c>weight_b</c>
    /// [out, width], the original variant's frozen <c>weight</c> [out, in] and the bias when <paramref name="bias"/>.</summary>
    public void Factored(string name, LowRankLayout layout, long outFeatures, long inFeatures, bool bias)
    {
        int width = layout.Linears[Weights.Prefix + name].Width;
        if (layout.Variant == LowRankVariant.Original)
        {
            if (layout.DenseTransposed) Weights.Add(name + ".weight", loader.GetTransposed(prefix + name + ".weight", inFeatures, outFeatures));
            else Get(name + ".weight", outFeatures, inFeatures);
        }
        Get(name + ".weight_a", width, inFeatures);
        Get(name + ".weight_b", outFeatures, width);
        if (bias) Get(name + ".bias", outFeatures);
    }

    /// <summary>Registers a linear map (weights transformed at load, e.g. transposed or reordered) as <paramref name="name"/>.</summary>
    public Linear Add(string name, Linear linear)
    {
        Weights.Add(name + ".weight", linear.Weight);
        if (linear.Bias is not null) Weights.Add(name + ".bias", linear.Bias);
        return linear;
    }

    /// <summary>Registers a tensor loaded elsewhere (a tied LM head is the embedding's tensor object).</summary>
    public Tensor Add(string name, Tensor tensor) => Weights.Add(name, tensor);
}

/// <summary>A slice of rows of a <see cref="ModelParameter"/> that is one Hugging Face tensor.</summary>
public sealed record ParameterPart(string Name, long Rows);

/// <summary>
/// One tensor the model computes with, as an autograd <see cref="Parameter"/>. Most are one Hugging Face tensor; the fused
/// ones (q|k|v, gate|up) are a row-wise concatenation of <see cref="Parts"/> and are named by joining the parts' names with
/// '+'. Training updates the fused tensor itself (the model's code stays the inference code); saving splits it back into the
/// HF tensors by <see cref="Parts"/> (see <see cref="CausalLanguageModel.StateDict"/>).
/// </summary>
public sealed record ModelParameter(string Name, Parameter Tensor, IReadOnlyList<ParameterPart> Parts)
{
    /// <summary>True when the Hugging Face tensor is the transpose of <see cref="Tensor"/> (GPT-2's Conv1D weights, [in, out]
    /// in the checkpoint, trained as a linear map's [out, in]).</summary>
    public bool Transposed { get; init; }

    /// <summary>The Hugging Face tensors of this parameter: views of row ranges of <see cref="Tensor"/> (or of its transpose).</summary>
    public IEnumerable<(string Name, Tensor Tensor)> HfTensors()
    {
        if (Transposed) { yield return (Parts[0].Name, Tensor.detach().t()); yield break; }
        if (Parts.Count == 1) { yield return (Parts[0].Name, Tensor); yield break; }
        long offset = 0;
        foreach (var part in Parts)
        {
            yield return (part.Name, Tensor.detach().narrow(0, offset, part.Rows));
            offset += part.Rows;
        }
    }
}

/// <summary>A model load's progress: the fraction of <paramref name="Total"/> elements loaded (capped at 1: a model may load
/// fewer or more elements than counted, e.g. with tied embeddings).</summary>
internal sealed record LoadProgress(IProgress<double> Fraction, long Total)
{
    public void Report(long loaded)
    {
        if (Total > 0) Fraction.Report(Math.Min(1.0, (double)loaded / Total));
    }
}
