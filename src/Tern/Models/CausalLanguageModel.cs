using Tern.Checkpoints;
using Tern.Caching;
using Tern.Interop;
using Tern.Runtime;
using TorchSharp;
using TorchSharp.Modules;
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
    /// <summary>When true the weights are autograd <see cref="Parameter"/>s listed in <see cref="CausalLanguageModel.Parameters"/>,
    /// ready for training (requires_grad is left off; the trainer turns it on for the tensors it trains).</summary>
    public bool Trainable { get; init; }
    /// <summary>Receives the fraction of the weights loaded (by elements), from 0 to 1, on the loading thread.</summary>
    public IProgress<double>? Progress { get; init; }
}

/// <summary>
/// A decoder-only causal language model: token ids in, next-token logits out, keys and values kept in a
/// <see cref="KvCache"/>. One subclass per architecture family, driven by the Hugging Face config.
/// </summary>
public abstract class CausalLanguageModel : IStepModel, IDisposable
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
        ["multihyena"] = (c, w) => new Hyena.MultiHyenaModel(c, w),
    };

    /// <summary>The MLP linear maps (full name, out, in) of the architectures InRank can factor, by <c>model_type</c>, and
    /// whether their dense weights are stored transposed ([in, out]).</summary>
    static readonly Dictionary<string, (Func<HfConfig, IEnumerable<(string Name, long Out, long In)>> Linears, bool Transposed)> MlpLinearsByType = new()
    {
        ["llama"] = (LlamaModel.MlpLinearMaps, false),
        ["mistral"] = (LlamaModel.MlpLinearMaps, false),
        ["qwen2"] = (LlamaModel.MlpLinearMaps, false),
        ["gpt2"] = (Gpt2Model.MlpLinearMaps, true),
    };

    /// <summary>The MLP linear maps of every block of <paramref name="config"/>'s model (full name, out, in) and whether the
    /// checkpoint stores their dense weights transposed (GPT-2's Conv1D); null when the architecture cannot have factored
    /// (low-rank) MLPs.</summary>
    public static (IReadOnlyList<(string Name, long Out, long In)> Linears, bool DenseTransposed)? MlpLinears(HfConfig config) =>
        MlpLinearsByType.TryGetValue(config.ModelType, out var entry) ? (entry.Linears(config).ToArray(), entry.Transposed) : null;

    /// <summary>The factored linear maps of an InRank model (config.json's <c>low_rank</c> section); null: all dense.</summary>
    public LowRankLayout? LowRank { get; private protected init; }

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
        var progress = options.Progress is { } report ? new LoadProgress(report, ElementsToLoad(config, source, options.DummyWeights)) : null;
        CausalLanguageModel model;
        using (source) model = Create(config, source, device, options.DType, options.Trainable, device, progress);
        options.Progress?.Report(1.0);
        // Compile the fused kernels now (NVRTC, about a second) rather than inside the first timed forward pass.
        if (device.type == DeviceType.CUDA) _ = Interop.FusedKernels.Available;
        return model;
    }

    /// <summary>The elements a load reads: a checkpoint's tensors, or for generated weights (<paramref name="dummy"/>) those of
    /// the model built from them on the meta device (shapes without a byte of weights).</summary>
    internal static long ElementsToLoad(HfConfig config, IWeightSource source, DummyWeightOptions? dummy)
    {
        if (source is CheckpointReader checkpoint)
            return checkpoint.Names.Sum(name => checkpoint.Info(name).Shape.Aggregate(1L, (n, d) => n * d));
        using var meta = DummyWeightSource.Create(dummy);
        using var model = Create(config, meta, new Device(DeviceType.META), ModelDType.Float32);
        return model.Info.ParameterCount;
    }

    /// <summary>A model with fresh random weights as transformers initialises them: normal(0, initializer_range) matrices
    /// and embeddings, norm weights 1, biases 0 (<see cref="DummyWeightSource"/>, reproducible by <paramref name="seed"/>).
    /// Trainable.</summary>
    public static CausalLanguageModel CreateRandom(HfConfig config, Device device, ModelDType dtype, long seed)
    {
        using var source = DummyWeightSource.Create(new DummyWeightOptions { Seed = seed, Std = config.GetDouble("initializer_range") ?? 0.02 });
        return Create(config, source, device, dtype, trainable: true);
    }

    /// <summary>Builds a model of <paramref name="config"/>'s architecture from a weight source; <paramref name="trainable"/> as
    /// <see cref="ModelLoadOptions.Trainable"/>.</summary>
    public static CausalLanguageModel Create(HfConfig config, IWeightSource weights, Device device, ModelDType dtype, bool trainable = false) =>
        Create(config, weights, device, dtype, trainable, device);

    /// <summary>As <see cref="Create(HfConfig, IWeightSource, Device, ModelDType, bool)"/> with the weights loaded on
    /// <paramref name="weightDevice"/> instead of the compute device: the starting point of an offloaded model, whose
    /// <c>Tern.Offloading</c> engine then places every weight by its policy and runs the model stage by stage.</summary>
    internal static CausalLanguageModel Create(HfConfig config, IWeightSource weights, Device device, ModelDType dtype, bool trainable, Device weightDevice,
        LoadProgress? progress = null)
    {
        string type = config.ModelType;
        if (!Architectures.TryGetValue(type, out var factory))
            throw new CheckpointException(
                $"{config.Path}: model_type '{type}' is not supported; Tern runs {string.Join(", ", Architectures.Keys)}.");
        if (config.Has(LowRankLayout.ConfigKey) && !MlpLinearsByType.ContainsKey(type))
            throw new CheckpointException($"{config.Path}: a '{LowRankLayout.ConfigKey}' (InRank) section on a {type} model; factored MLPs are supported for {string.Join(", ", MlpLinearsByType.Keys)}.");
        using var noGrad = torch.no_grad();
        var loader = new WeightLoader(weights, dtype.ToScalarType(), device, weightDevice, trainable, "model.", "transformer.") { Progress = progress };
        var model = factory(config, loader);
        model.parameters = trainable ? loader.Parameters.ToArray() : null;
        model.Config = config;
        model.Device = device;
        model.DType = dtype;
        return model;
    }

    /// <summary>A cache sized for this model: <paramref name="maxSequenceLength"/> tokens per sequence as <paramref name="config"/>
    /// asks (null: the full 16-bit cache).</summary>
    public KvCache CreateCache(int batchSize, int maxSequenceLength, KvCacheConfig? config = null, int maxStepTokens = 1) =>
        CreateCache(batchSize, maxSequenceLength, config ?? KvCacheConfig.Full, maxStepTokens, DType.ToScalarType());

    KvCache CreateCache(int batchSize, int maxSequenceLength, KvCacheConfig config, int maxStepTokens, ScalarType dtype)
    {
        RequireCache(config);
        int capacity = config.Eviction.Capacity(maxSequenceLength, maxStepTokens);
        var shape = CacheShape(new KvCacheOptions
        {
            BatchSize = batchSize,
            Layers = Info.Layers,
            KvHeads = Info.KvHeads,
            HeadDim = Info.HeadDim,
            Capacity = capacity,
            MaxSequenceLength = maxSequenceLength,
            DType = dtype,
            Device = Device,
        }, config);
        // Cache-index positions stay below the capacity: learned position tables must hold that many rows.
        if (config.RollPositions && Info.LearnedPositions && capacity > Info.MaxPositions)
            throw new OptionException( // one literal: a FormattableString cannot be concatenated
                $"{TernOption.KvPolicy} {config.Eviction.Name} positions tokens by their cache index, which reaches {capacity - 1} with this {TernOption.KvBudget} (budget plus one step of {maxStepTokens} tokens), but this {Info.ModelType} model has {Info.MaxPositions} learned positions; use a smaller budget or a shorter prompt.");
        return config.CreateCache(shape);
    }

    /// <summary>Refuses (<see cref="OptionException"/>) a cache configuration the architecture cannot run; every one by default.
    /// Serving asks when a request arrives, before it queues.</summary>
    internal virtual void RequireCache(KvCacheConfig config) { }

    /// <summary>The cache an architecture steps through: by default <paramref name="options"/>, a KV layer per decoder layer. A
    /// model with recurrent layers adds their per-sequence state (<see cref="KvCacheOptions.Recurrent"/>) and may drop the KV
    /// layers.</summary>
    private protected virtual KvCacheOptions CacheShape(KvCacheOptions options, KvCacheConfig config) => options;

    /// <summary>True when the model's layers keep a recurrent per-sequence state (Hyena) in the cache besides or instead of keys
    /// and values: such a model runs in memory only, densely (no offloading, no contextual sparsity).</summary>
    public bool HasRecurrentLayers { get; private protected init; }

    /// <inheritdoc />
    public IStepRunner CreateRunner(int batchSize, int maxSequenceLength, int maxStepTokens, KvCacheConfig? cache) =>
        new CacheRunner(this, CreateCache(batchSize, maxSequenceLength, cache, maxStepTokens));

    /// <summary>
    /// Runs one step: appends the batch's keys/values to <paramref name="cache"/> and returns logits
    /// ([batch, vocab] when <see cref="ForwardBatch.LastPositionOnly"/>, else [batch, tokens, vocab]) in the model's dtype.
    /// </summary>
    public Tensor Forward(ForwardBatch batch, KvCache cache)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        if (cache.Options.RollPositions) batch = AtCacheIndexes(batch, cache);
        CheckPositions(batch);
        var logits = Run(batch, cache);
        cache.Advance(batch.RealTokens);
        return logits.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Logits of one sequence in one call, as Hugging Face's <c>model(input_ids).logits[0]</c> or llama.cpp's per-token
    /// logits: row t holds the scores of the token after <c>ids[0..t]</c> (unnormalised, one per vocabulary entry), in fp32
    /// on the host. No cache outlives the call; for generation use <see cref="Generation.Generator.GenerateTokens"/>.
    /// </summary>
    /// <param name="ids">Token ids (at least one), e.g. from <see cref="Tokenization.TernTokenizer.Encode"/>.</param>
    /// <returns><c>[ids.Count][vocab]</c>.</returns>
    public float[][] Logits(IReadOnlyList<int> ids)
    {
        if (ids.Count == 0) throw new ArgumentException("logits need at least one token id.", nameof(ids));
        using var scope = torch.NewDisposeScope();
        using var cache = CreateCache(1, ids.Count, maxStepTokens: ids.Count);
        var logits = Forward(ForwardBatch.LeftPadded([ids], Device), cache)[0].to(ScalarType.Float32, torch.CPU).contiguous(); // [T, V]
        float[] flat = logits.data<float>().ToArray();
        int vocab = (int)logits.size(1);
        return Enumerable.Range(0, ids.Count).Select(t => flat.AsSpan(t * vocab, vocab).ToArray()).ToArray();
    }

    /// <summary>Positions by cache index (StreamingLLM): a new real token gets the number of entries its row holds before it.
    /// Rows are read from layer 0, KV head 0: policies that position by cache index evict alike in every layer and head.</summary>
    internal static ForwardBatch AtCacheIndexes(ForwardBatch batch, KvCache cache) =>
        AtCacheIndexes(batch, cache[0].EntryCounts().select(1, 0).unsqueeze(1), cache[0].Capacity);

    /// <summary>Positions by cache index after <paramref name="held"/> entries per row (int64 [B,1], or one count for every row;
    /// on any device: offloading may keep the cache in host memory, or know the count ahead) in a cache of
    /// <paramref name="capacity"/> slots.</summary>
    internal static ForwardBatch AtCacheIndexes(ForwardBatch batch, Tensor held, int capacity)
    {
        var real = batch.Positions.ge(0);
        var index = held.to(batch.Positions.device) + real.to(ScalarType.Int64).cumsum(1) - 1;
        var positions = torch.where(real, index, torch.tensor(-1L, device: index.device));
        // Indexes stay below the capacity, and never exceed the original positions.
        return batch.WithModelPositions(positions, Math.Min(batch.MaxPosition, capacity - 1));
    }

    ModelParameter[]? parameters;

    /// <summary>The model's weights as autograd parameters, in load order (a tied lm_head is the embedding, listed once).
    /// Only for models built with <see cref="ModelLoadOptions.Trainable"/> or <see cref="CreateRandom"/>.</summary>
    public IReadOnlyList<ModelParameter> Parameters => parameters ?? throw new InvalidOperationException(
        "this model was loaded for inference; load it with ModelLoadOptions.Trainable (or CreateRandom) to train it.");

    /// <summary>Puts <paramref name="value"/> (taken over, as a new autograd parameter with requires_grad off) in the place of
    /// the parameter <paramref name="name"/> — a factor resized at InRank's stage hand-off — and frees the old tensor.</summary>
    internal ModelParameter ReplaceParameter(string name, Tensor value)
    {
        var all = parameters ?? throw new InvalidOperationException("only a trainable model's parameters can be replaced.");
        int i = Array.FindIndex(all, p => p.Name == name);
        if (i < 0 || all[i].Parts.Count != 1) throw new KeyNotFoundException($"the model has no single parameter '{name}'.");
        var part = Parts.Single(p => name.StartsWith(p.Prefix, StringComparison.Ordinal) && p.Names.Contains(name[p.Prefix.Length..]));
        var parameter = (Parameter)new Parameter(value, requires_grad: false).DetachFromDisposeScope();
        part.Replace(name[part.Prefix.Length..], parameter).Dispose();
        all[i] = new ModelParameter(name, parameter, new[] { new ParameterPart(name, parameter.size(0)) });
        return all[i];
    }

    /// <summary>config.json as the model now is: the loaded config with the current <see cref="LowRank"/> section.</summary>
    public System.Text.Json.Nodes.JsonObject ConfigJson()
    {
        var json = Config.Json.DeepClone().AsObject();
        if (LowRank is { } lowRank) json[LowRankLayout.ConfigKey] = lowRank.ToJson();
        return json;
    }

    /// <summary>The weights under their Hugging Face names and shapes (fused tensors split back by rows), as views that
    /// share memory with the model: what a safetensors file of this model holds.</summary>
    public IReadOnlyList<(string Name, Tensor Tensor)> StateDict() => Parameters.SelectMany(p => p.HfTensors()).ToArray();

    /// <summary>
    /// A training forward pass over whole sequences: token ids [B,T] (positions 0..T-1, no padding) to logits [B,T,V], with
    /// autograd recording when grad is enabled. It runs the same architecture code as <see cref="Forward(ForwardBatch, KvCache)"/> through a fresh
    /// dense cache of exactly T slots: appending copies the keys/values into the cache tensors, which autograd tracks like any
    /// other op (tested against finite differences). The fused CUDA kernels step aside while grad is enabled.
    /// </summary>
    /// <param name="inputIds">Token ids [B,T].</param>
    /// <param name="prefix">Optional input vectors [n, E] placed before every row (a soft prompt, see
    /// <see cref="ForwardBatch.PrefixEmbeddings"/>): the sequences become n + T long and the logits [B, n + T, V]; gradients
    /// reach the prefix.</param>
    public Tensor ForwardTraining(Tensor inputIds, Tensor? prefix = null)
    {
        long b = inputIds.size(0), t = inputIds.size(1) + (prefix?.size(0) ?? 0);
        if (Info.LearnedPositions && t > Info.MaxPositions)
            throw new InvalidOperationException($"sequence length {t} is past the {Info.MaxPositions} learned positions of this {Info.ModelType} model.");
        using var scope = torch.NewDisposeScope();
        if (prefix is not null) // placeholder ids where the prefix goes
            inputIds = torch.cat(new[] { torch.zeros(b, prefix.size(0), ScalarType.Int64, inputIds.device), inputIds }, 1);
        var positions = torch.arange(t, ScalarType.Int64, Device).unsqueeze(0).expand(b, t).contiguous();
        var batch = new ForwardBatch
        {
            InputIds = TensorMemory.IsOn(inputIds, Device) ? inputIds : inputIds.to(Device),
            Positions = positions,
            RealTokens = Enumerable.Repeat((int)t, (int)b).ToArray(),
            MaxPosition = (int)t - 1,
            PrefixEmbeddings = prefix?.to(Device),
        };
        // Under autocast keys and values are kept in its type, so attention runs in it as torch.autocast's SDPA does.
        using var cache = CreateCache((int)b, (int)t, KvCacheConfig.Full, (int)t, Autocast.Current ?? DType.ToScalarType());
        var logits = Run(batch, cache);
        return logits.MoveToOuterDisposeScope();
    }

    /// <summary>The model's parts, each with its weights by checkpoint name: [0] the embedding, [1..L] the decoder layers,
    /// [L + 1] the head (final norm and LM head). Set by the architecture's constructor.</summary>
    internal IReadOnlyList<PartWeights> Parts { get; private protected set; } = Array.Empty<PartWeights>();

    /// <summary>The name of the token-embedding table in the embedding part.</summary>
    private protected virtual string TokenTable => "embed_tokens.weight";

    /// <summary>The token embeddings of the step's ids [B,T,E], the first rows replaced by <see cref="ForwardBatch.PrefixEmbeddings"/>
    /// when the step has them: what every architecture's <see cref="Embed"/> starts from.</summary>
    private protected Tensor TokenEmbeddings(PartWeights weights, ModelStep step)
    {
        var ids = step.Batch.InputIds;
        long b = ids.size(0), t = ids.size(1);
        var table = weights[TokenTable];
        var x = table.index_select(0, ids.flatten()).view(b, t, -1);
        if (step.Batch.PrefixEmbeddings is not { } prefix) return x;
        long n = prefix.size(0);
        if (n > t || prefix.size(1) != x.size(2))
            throw new ArgumentException($"a prefix of {n} × {prefix.size(1)} does not fit a step of {t} tokens of width {x.size(2)}.");
        var head = prefix.to(x.dtype).unsqueeze(0).expand(b, n, -1);
        return n == t ? head : torch.cat(new[] { head, x.narrow(1, n, t - n) }, 1);
    }

    /// <summary>Width of the token embeddings (the hidden size, or OPT's word_embed_proj_dim): what a soft prompt's vectors hold.</summary>
    public long TokenEmbeddingWidth => Parts[0][TokenTable].size(1);

    /// <summary>Rows 0..<paramref name="count"/>−1 of the token-embedding table, an fp32 copy (a soft prompt's starting point).</summary>
    public Tensor EmbeddingRows(int count)
    {
        var table = Parts[0][TokenTable];
        if (count < 0 || count > table.size(0)) throw new ArgumentException($"the vocabulary has {table.size(0)} rows; {count} were asked for.");
        using var noGrad = torch.no_grad();
        return table.narrow(0, 0, count).to(ScalarType.Float32, copy: true).cpu();
    }

    /// <summary>The embedding part: token ids (and, for learned positions, positions) to hidden states [B,T,H].</summary>
    private protected abstract Tensor Embed(PartWeights weights, ModelStep step);

    /// <summary>Decoder layer <paramref name="layer"/>: hidden states in and out, keys and values through its cache (or, for a
    /// segmented step, each row range's cache).</summary>
    private protected abstract Tensor Layer(int layer, PartWeights weights, Tensor hidden, ModelStep step, LayerState cache);

    /// <summary>The head: hidden states of the positions that want logits ([B,H] or [B,T,H]) to logits.</summary>
    private protected abstract Tensor Head(PartWeights weights, Tensor hidden, ModelStep step);

    /// <summary>
    /// Runs one step whose rows belong to several caches, consecutive ranges of <paramref name="caches"/>' active rows in
    /// order (serving pools of different KV cache configurations): everything but attention runs once over all rows, each
    /// range attends through its own cache under its own policy. Each range's logits equal those of <see cref="Forward(ForwardBatch, KvCache)"/>
    /// over its cache alone. With <paramref name="writeSlots"/> (one device-held slot per cache, <see cref="ForwardBatch.WriteSlots"/>)
    /// every range steps with static shapes, as a CUDA graph captures it; the batch itself then carries none.
    /// </summary>
    internal Tensor Forward(ForwardBatch batch, IReadOnlyList<KvCache> caches, IReadOnlyList<Tensor>? writeSlots = null)
    {
        if (batch.WriteSlots is not null) throw new ArgumentException("a step over several caches takes one write slot per cache, not the batch's.");
        if (writeSlots is not null && writeSlots.Count != caches.Count) throw new ArgumentException($"{writeSlots.Count} write slots for {caches.Count} caches.");
        if (caches.Count == 1) return Forward(writeSlots is null ? batch : batch.WithWriteSlots(writeSlots[0]), caches[0]);
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var segments = new List<StepSegment>(caches.Count);
        int start = 0;
        for (int i = 0; i < caches.Count; i++)
        {
            var cache = caches[i];
            var rows = batch.Rows(start, cache.ActiveRows, writeSlots?[i]);
            if (cache.Options.RollPositions) rows = AtCacheIndexes(rows, cache);
            segments.Add(new StepSegment(start, cache.ActiveRows, cache, new ModelStep(rows)));
            start += cache.ActiveRows;
        }
        if (start != batch.InputIds.size(0))
            throw new ArgumentException($"the caches hold {start} active rows; the step has {batch.InputIds.size(0)}.");
        if (segments.Any(s => s.Cache.Options.RollPositions))
            batch = batch.WithModelPositions(torch.cat(segments.Select(s => s.Step.Batch.ModelPositions).ToArray()), segments.Max(s => s.Step.Batch.MaxModelPosition));
        CheckPositions(batch);
        var logits = Run(new ModelStep(batch, Sparsity?.ForStep(batch)), layer => LayerState.Of(segments, layer));
        foreach (var s in segments) s.Cache.Advance(s.Step.Batch.RealTokens);
        return logits.MoveToOuterDisposeScope();
    }

    Tensor Run(ForwardBatch batch, KvCache cache) => Run(new ModelStep(batch, Sparsity?.ForStep(batch)), layer => LayerState.Of(cache, layer));

    /// <summary>The forward pass: embedding, every layer (each one's temporaries freed as it ends), head.</summary>
    Tensor Run(ModelStep step, Func<int, LayerState> layerState)
    {
        var batch = step.Batch;
        try
        {
            var h = Embed(Parts[0], step);
            for (int i = 0; i < Info.Layers; i++)
            {
                var input = h;
                step.Sparsity?.LayerInput(i, h);
                using var layerScope = torch.NewDisposeScope();
                h = Layer(i, Parts[i + 1], h, step, layerState(i));
                h.MoveToOuterDisposeScope();
                input.Dispose(); // free each layer's input now rather than at the end of the step
            }
            return Head(Parts[^1], SelectOutputs(h, batch), step);
        }
        finally
        {
            step.Sparsity?.EndStep();
            step.Dispose();
        }
    }

    /// <summary>DejaVu's contextual sparsity for the steps <see cref="Forward(ForwardBatch, KvCache)"/> runs (null: dense). An offloaded
    /// model keeps its own (<c>OffloadedModel.Sparsity</c>) and hands each stage its step's selector.</summary>
    public IContextualSparsity? Sparsity
    {
        get;
        set
        {
            if (value is not null && HasRecurrentLayers)
                throw new OptionException($"{TernOption.Sparsity} is not supported by this {Info.ModelType} model (recurrent layers); run it dense.");
            field = value;
            StoreDownProjections(transposed: value is { SkipsNeurons: true } && Device.type == DeviceType.CUDA);
        }
    }

    /// <summary>The linear maps of a decoder layer's MLP that DejaVu's neuron sparsity reads by rows (up; gated: [gate | up]
    /// stacked) and by columns (down), by name in the layer's part; null when the architecture has no neuron sparsity.</summary>
    private protected virtual (string Up, string Down, bool Gated)? SparseMlpNames => null;

    /// <summary>Layer <paramref name="layer"/>'s MLP as DejaVu's sparse products read it, or null (no neuron sparsity, or an
    /// InRank-factored MLP): what <c>tern bench</c> times the gather-GEMV on.</summary>
    internal (Linear Up, Linear Down, bool Gated)? SparseMlp(int layer) =>
        SparseMlpNames is { } n && Parts[layer + 1].Optional(n.Down + ".weight") is not null
            ? (Parts[layer + 1].Linear(n.Up), Parts[layer + 1].Linear(n.Down), n.Gated) : null;

    /// <summary>
    /// Lays each MLP down-projection W [hidden, neurons] out as DejaVu keeps it for neuron sparsity on CUDA: stored transposed (the
    /// same logical tensor, a view of a contiguous Wᵀ), so a selected neuron's output weights are one contiguous row and the
    /// gather-GEMV reads only the selected neurons' bytes — a column of a row-major W is one element per row, and at 5–20% of
    /// the neurons nearly every 32-byte sector of W would still be fetched. Re-laid in place, one layer at a time: no lasting
    /// memory cost (at most one layer's down-projection more while it is copied, 411 MB at OPT-30B's shape); dense steps read the
    /// transposed layout through cuBLAS. Back to row-major when neuron sparsity is switched off, so a dense run keeps its GEMV.
    /// </summary>
    void StoreDownProjections(bool transposed)
    {
        if (SparseMlpNames is not { } names) return;
        string name = names.Down + ".weight";
        using var noGrad = torch.no_grad();
        for (int i = 1; i < Parts.Count - 1; i++)
        {
            if (Parts[i].Optional(name) is not { } weight || Interop.FusedKernels.StoredTransposed(weight) == transposed) continue;
            // The intermediate views hold the old storage: disposed with this scope, so each layer's old layout is freed now
            // (left to the finalizer, 48 layers × 411 MB outlived the switch and the next one ran out of memory).
            using var scope = torch.NewDisposeScope();
            var relaid = (transposed ? weight.t().contiguous().t() : weight.contiguous()).DetachFromDisposeScope();
            Parts[i].Replace(name, relaid).Dispose();
        }
    }

    /// <summary>Stages of FlexGen's schedule (<c>Tern.Offloading</c>): the parts, in order.</summary>
    internal int StageCount => Parts.Count;

    /// <summary>
    /// Runs one part with <paramref name="weights"/> (the part's names over tensors wherever they were loaded to): the
    /// embedding takes <paramref name="batch"/>'s ids and returns hidden states [B,T,H]; a layer takes and returns hidden states,
    /// appending to <paramref name="cache"/> (its layer's cache); the head returns logits as <see cref="Forward(ForwardBatch, KvCache)"/> does.
    /// The same code as <see cref="Forward(ForwardBatch, KvCache)"/>, one part at a time; <paramref name="sparsity"/> is the step's
    /// selector (the same object for every stage of one step of one batch; its caller ends it after the head).
    /// </summary>
    internal Tensor RunStage(int stage, PartWeights weights, Tensor? hidden, ForwardBatch batch, LayerKvCache? cache, ISparsityStep? sparsity = null)
    {
        using var step = new ModelStep(batch, sparsity);
        if (stage == 0)
        {
            CheckPositions(batch);
            return Embed(weights, step);
        }
        var h = hidden ?? throw new ArgumentException($"stage {stage} follows the embedding and needs the previous stage's hidden states.");
        if (stage == Parts.Count - 1) return Head(weights, SelectOutputs(h, batch), step);
        if (cache is null) throw new ArgumentException($"stage {stage} is a decoder layer and needs its KV cache.");
        sparsity?.LayerInput(stage - 1, h);
        return Layer(stage - 1, weights, h, step, cache);
    }

    /// <summary>A clear error for positions past a learned position table (an index error in native code otherwise).</summary>
    void CheckPositions(ForwardBatch batch)
    {
        if (Info.LearnedPositions && batch.MaxModelPosition >= Info.MaxPositions)
            throw new InvalidOperationException(
                $"position {batch.MaxModelPosition} is past the {Info.MaxPositions} learned positions of this {Info.ModelType} model.");
    }

    /// <summary>Picks the last position of hidden states [B,T,H] when only next-token logits are wanted.</summary>
    static Tensor SelectOutputs(Tensor hidden, ForwardBatch batch) =>
        batch.LastPositionOnly ? hidden.select(1, hidden.size(1) - 1) : hidden;

    /// <summary>Releases what the architecture holds besides its weights (rotary tables).</summary>
    private protected virtual void DisposeBuffers() { }

    /// <inheritdoc />
    public void Dispose()
    {
        // A tied tensor (LM head = embedding) is listed in two parts and freed once.
        foreach (var t in Parts.SelectMany(p => p.Tensors).Distinct(ReferenceEqualityComparer.Instance).Cast<Tensor>()) t.Dispose();
        DisposeBuffers();
        GC.SuppressFinalize(this);
    }
}
