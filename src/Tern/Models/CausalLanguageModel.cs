using Tern.Checkpoints;
using Tern.KvCache;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>How to load a model.</summary>
public sealed record ModelLoadOptions
{
    /// <summary>Where to compute.</summary>
    public DeviceKind Device { get; init; } = DeviceKind.Auto;
    /// <summary>Weight and activation type.</summary>
    public ModelDType DType { get; init; } = ModelDType.Float32;
    /// <summary>When set, weights are generated instead of read (config.json alone is needed), for throughput work.</summary>
    public DummyWeightOptions? DummyWeights { get; init; }
}

/// <summary>
/// A decoder-only causal language model: token ids in, next-token logits out, keys and values kept in a
/// <see cref="KvCache"/>. One subclass per architecture family, driven by the Hugging Face config.
/// </summary>
public abstract class CausalLanguageModel : IDisposable
{
    /// <summary>Architectures by <c>model_type</c>.</summary>
    static readonly Dictionary<string, Func<HfConfig, WeightLoader, CausalLanguageModel>> Architectures = new()
    {
        ["llama"] = (c, w) => new LlamaModel(c, w),
        ["mistral"] = (c, w) => new LlamaModel(c, w),
        ["qwen2"] = (c, w) => new LlamaModel(c, w),
        ["opt"] = (c, w) => new OptModel(c, w),
        ["gpt_neox"] = (c, w) => new GptNeoXModel(c, w),
        ["gpt2"] = (c, w) => new Gpt2Model(c, w),
    };

    /// <summary>The <c>model_type</c> values Tern can load.</summary>
    public static IReadOnlyCollection<string> SupportedModelTypes => Architectures.Keys;

    /// <summary>Set by the subclass constructor.</summary>
    public ModelInfo Info { get; protected init; } = null!;

    /// <summary>The config the model was built from.</summary>
    public HfConfig Config { get; private set; } = null!;

    /// <summary>Where the weights live.</summary>
    public Device Device { get; private set; } = torch.CPU;

    /// <summary>Weight and activation type.</summary>
    public ModelDType DType { get; private set; }

    /// <summary>Loads a Hugging Face model folder (or builds it from config.json with dummy weights).</summary>
    public static CausalLanguageModel Load(string modelDirectory, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        var config = HfConfig.Load(modelDirectory);
        Device device = ComputeOptions.ResolveDevice(options.Device);
        IWeightSource source = options.DummyWeights is { } dummy ? DummyWeightSource.Create(dummy) : CheckpointReader.Open(modelDirectory);
        CausalLanguageModel model;
        using (source) model = Create(config, source, device, options.DType);
        // Compile the fused kernels now (NVRTC, about a second) rather than inside the first timed forward pass.
        if (device.type == DeviceType.CUDA) _ = Interop.FusedKernels.Available;
        return model;
    }

    /// <summary>Builds a model of <paramref name="config"/>'s architecture from a weight source.</summary>
    public static CausalLanguageModel Create(HfConfig config, IWeightSource weights, Device device, ModelDType dtype)
    {
        string type = config.ModelType;
        if (!Architectures.TryGetValue(type, out var factory))
            throw new CheckpointException(
                $"{config.Path}: model_type '{type}' is not supported; Tern runs {string.Join(", ", Architectures.Keys)}.");
        using var noGrad = torch.no_grad();
        var loader = new WeightLoader(weights, dtype.ToScalarType(), device, "model.", "transformer.");
        var model = factory(config, loader);
        model.Config = config;
        model.Device = device;
        model.DType = dtype;
        return model;
    }

    /// <summary>A cache sized for this model: <paramref name="maxSequenceLength"/> tokens per sequence under <paramref name="policy"/>.</summary>
    public KvCache.KvCache CreateCache(int batchSize, int maxSequenceLength, IKvCachePolicy? policy = null, int maxStepTokens = 1)
    {
        policy ??= DensePolicy.Instance;
        return KvCache.KvCache.Create(new KvCacheOptions
        {
            BatchSize = batchSize,
            Layers = Info.Layers,
            KvHeads = Info.KvHeads,
            HeadDim = Info.HeadDim,
            Capacity = policy.Capacity(maxSequenceLength, maxStepTokens),
            DType = DType.ToScalarType(),
            Device = Device,
        }, policy);
    }

    /// <summary>
    /// Runs one step: appends the batch's keys/values to <paramref name="cache"/> and returns logits
    /// ([batch, vocab] when <see cref="ForwardBatch.LastPositionOnly"/>, else [batch, tokens, vocab]) in the model's dtype.
    /// </summary>
    public Tensor Forward(ForwardBatch batch, KvCache.KvCache cache)
    {
        if (Info.LearnedPositions && batch.MaxPosition >= Info.MaxPositions)
            throw new InvalidOperationException(
                $"position {batch.MaxPosition} is past the {Info.MaxPositions} learned positions of this {Info.ModelType} model.");
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var logits = Run(batch, cache);
        cache.Advance(batch.RealTokens);
        return logits.MoveToOuterDisposeScope();
    }

    /// <summary>The architecture's forward pass.</summary>
    protected abstract Tensor Run(ForwardBatch batch, KvCache.KvCache cache);

    /// <summary>Picks the last position of hidden states [B,T,H] when only next-token logits are wanted.</summary>
    protected static Tensor SelectOutputs(Tensor hidden, ForwardBatch batch) =>
        batch.LastPositionOnly ? hidden.select(1, hidden.shape[1] - 1) : hidden;

    /// <summary>Releases the weights.</summary>
    protected abstract void DisposeWeights();

    /// <inheritdoc />
    public void Dispose()
    {
        DisposeWeights();
        GC.SuppressFinalize(this);
    }
}
