using Tern.Caching;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;

namespace Tern.Offloading;

/// <summary>
/// What FlexGen's cost model needs to know about a model and a workload, from config.json alone (the model is built on
/// libtorch's meta device: shapes without a byte of weights, so a 30B config plans in a second). FlexGen's OPT-only sizes
/// are generalised: wi is the model's weight bytes per layer (embedding and head spread over the layers), the GEMM work per
/// token is 2·(block parameters), and cache and activation bytes come from the KV heads and widths of the architecture.
/// </summary>
public sealed record OffloadWorkload
{
    /// <summary>Transformer blocks (L).</summary>
    public required int Layers { get; init; }
    /// <summary>Hidden width (h).</summary>
    public required int Hidden { get; init; }
    /// <summary>Query heads × head dimension (h for OPT; attention FLOPs scale with it).</summary>
    public required int AttentionWidth { get; init; }
    /// <summary>Query heads (nh).</summary>
    public required int Heads { get; init; }
    /// <summary>Widest intermediate activation of a block (h2 = 4h for OPT; 2·intermediate for gated MLPs).</summary>
    public required int Intermediate { get; init; }
    /// <summary>All weight bytes divided by L (wi), uncompressed.</summary>
    public required double LayerWeightBytes { get; init; }
    /// <summary>Parameters of one block (2· this = GEMM FLOPs per token).</summary>
    public required double LayerParameters { get; init; }
    /// <summary>KV-cache bytes per token and layer (2·kvHeads·headDim·element size; 4h for OPT in fp16).</summary>
    public required double CacheBytesPerToken { get; init; }
    /// <summary>Bytes per element of weights and activations.</summary>
    public required int ElementSize { get; init; }
    /// <summary>Prompt length (s).</summary>
    public required int Prompt { get; init; }
    /// <summary>New tokens (n).</summary>
    public required int Generate { get; init; }

    /// <summary>Cache entries a sequence keeps at most under its KV policy (H2O's or StreamingLLM's budget, plus the room its
    /// eviction needs); null keeps all of prompt + generated.</summary>
    public double? CacheTokens { get; init; }
    /// <summary>Bits per stored cache element under the KV policy (16, or 8 / 4 group-quantized).</summary>
    public int CacheBits { get; init; } = 16;

    /// <summary>This workload with the cache that <paramref name="cache"/> keeps: its bits, and the decode capacity per sequence
    /// of a policy that evicts (one that never does keeps every entry: <see cref="CacheTokens"/> stays null, and only a step's
    /// new entries go back to their home).</summary>
    public OffloadWorkload WithKvPolicy(KvCacheConfig cache) =>
        this with { CacheTokens = cache.Eviction.AppendOnly ? null : cache.Eviction.Capacity(Prompt + Generate, 1), CacheBits = cache.Bits };

    /// <summary>Activation bytes per token (2h for OPT in fp16).</summary>
    public double HiddenBytesPerToken => (double)Hidden * ElementSize;

    /// <summary>The workload of <paramref name="modelDirectory"/>'s config in <paramref name="dtype"/>.</summary>
    public static OffloadWorkload FromConfig(string modelDirectory, ModelDType dtype, int prompt, int generate)
    {
        if (prompt < 1 || generate < 1) throw new ArgumentException($"prompt ({prompt}) and generated tokens ({generate}) must be at least 1.");
        var config = HfConfig.Load(modelDirectory);
        using var source = DummyWeightSource.Create(new DummyWeightOptions { Kind = DummyWeightKind.Constant });
        var meta = new torch.Device(DeviceType.META);
        using var model = CausalLanguageModel.Create(config, source, meta, dtype, trainable: false, weightDevice: meta);
        var info = model.Info;
        var all = model.Parts.SelectMany(p => p.Tensors).Distinct(ReferenceEqualityComparer.Instance).Cast<torch.Tensor>().ToArray();
        var block = model.Parts[1].Tensors;
        int es = dtype.ElementSize();
        return new OffloadWorkload
        {
            Layers = info.Layers, Hidden = info.HiddenSize, AttentionWidth = info.Heads * info.HeadDim, Heads = info.Heads,
            Intermediate = (int)block.Where(t => t.dim() == 2).Max(t => t.size(0)),
            LayerWeightBytes = all.Sum(t => (double)t.NumberOfElements) * es / info.Layers,
            LayerParameters = block.Sum(t => (double)t.NumberOfElements),
            CacheBytesPerToken = (double)info.KvBytesPerToken(es) / info.Layers,
            ElementSize = es, Prompt = prompt, Generate = generate,
        };
    }
}
