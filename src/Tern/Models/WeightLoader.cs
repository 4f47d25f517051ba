using Tern.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>Loads a model's parameters by their Hugging Face names, converted to the compute dtype and device, and counts them.</summary>
internal sealed class WeightLoader
{
    readonly IWeightSource source;
    readonly string[] optionalPrefixes;

    /// <param name="optionalPrefixes">Leading name parts some published checkpoints omit (GPT-2's "transformer.", OPT's "model.").</param>
    public WeightLoader(IWeightSource source, ScalarType dtype, Device device, params string[] optionalPrefixes)
    {
        this.source = source;
        this.optionalPrefixes = optionalPrefixes;
        DType = dtype;
        Device = device;
    }

    public ScalarType DType { get; }
    public Device Device { get; }
    public long ParameterCount { get; private set; }
    public IWeightSource Source => source;

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
        var tensor = source.Load(resolved, shape, DType, Device).DetachFromDisposeScope(); // weights live as long as the model
        ParameterCount += tensor.NumberOfElements;
        return tensor;
    }

    public Tensor? GetOptional(string name, params long[] shape) => Contains(name) ? Get(name, shape) : null;

    public Linear Linear(string prefix, long outFeatures, long inFeatures, bool bias) =>
        new(Get(prefix + ".weight", outFeatures, inFeatures), bias ? Get(prefix + ".bias", outFeatures) : null);

    /// <summary>Several linear maps of the same input fused into one (rows concatenated): one GEMM instead of several.</summary>
    public Linear Fused(string[] prefixes, long[] outFeatures, long inFeatures, bool bias)
    {
        var parts = prefixes.Select((p, i) => Linear(p, outFeatures[i], inFeatures, bias)).ToArray();
        var weight = torch.cat(parts.Select(p => p.Weight).ToArray(), 0).DetachFromDisposeScope();
        var b = bias ? torch.cat(parts.Select(p => p.Bias!).ToArray(), 0).DetachFromDisposeScope() : null;
        foreach (var p in parts) p.Dispose();
        return new Linear(weight, b);
    }
}
