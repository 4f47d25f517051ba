using Tern.Checkpoints;
using Tern.Generation;
using Tern.Caching;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Offloading;

/// <summary>How to run a model offloaded.</summary>
public sealed record OffloadOptions
{
    /// <summary>Placement, block shape and switches.</summary>
    public required OffloadPolicy Policy { get; init; }
    /// <summary>Folder under which the disk tier's private folder is made (FlexGen's <c>--offload-dir</c>); needed only when the
    /// policy puts something on disk.</summary>
    public string? Directory { get; init; }
    /// <summary>Tern's own cap on the bytes it places on the compute device (weights, KV cache, activations and its working
    /// buffers), so a smaller card can be emulated on a larger one; null = no cap.</summary>
    public long? GpuMemoryLimit { get; init; }
}

/// <summary>The tokens (and, when asked, the logits) of an offloaded generation.</summary>
/// <param name="Tokens">New tokens of each prompt, in prompt order.</param>
/// <param name="Logits">When kept: the next-token logits of each step (prefill first), fp32 [prompts, vocab] on the CPU.</param>
/// <param name="Prefill">Time of the prefill steps, summed over blocks.</param>
/// <param name="Decode">Time of the decode steps, summed over blocks.</param>
public sealed record OffloadedGeneration(IReadOnlyList<IReadOnlyList<int>> Tokens, IReadOnlyList<Tensor>? Logits, TimeSpan Prefill, TimeSpan Decode)
{
    /// <summary>Generated tokens per second, prefill included (FlexGen's generation throughput).</summary>
    public double TokensPerSecond => Tokens.Sum(t => t.Count) / (Prefill + Decode).TotalSeconds;
}

/// <summary>
/// FlexGen (Sheng et al. 2023) on Tern's models: the weights live on GPU / CPU / disk by the <see cref="OffloadPolicy"/>, the
/// KV cache and activations per whole sequence, and generation walks the zig-zag block schedule (§1.1.1): for each token,
/// for each stage (embedding, every block, the head), for each GPU batch — loading a share of the next stage's weights and
/// the next batch's cache and activations while the current one computes, storing the previous batch's (§1.1.2), with a
/// barrier per step. The stages run the architecture's own parts (<c>CausalLanguageModel.RunStage</c>), so every
/// architecture Tern loads runs offloaded. It is an <see cref="IStepModel"/>: the <see cref="Generation.Generator"/>, evaluation
/// and the serving engine step it one token at a time (sampling, stop strings, streaming), and KV policies other than the
/// plain full cache keep each batch's cache whole on the GPU or in host memory (<see cref="NeedsResidentCache"/>).
/// </summary>
public sealed class OffloadedModel : IStepModel, IDisposable
{
    readonly CausalLanguageModel model;
    readonly OffloadedWeights weights;
    readonly ITransferEngine engine;
    readonly OffloadDirectory? directory;
    readonly GpuBudget budget;
    readonly ScalarType dtype;

    OffloadedModel(CausalLanguageModel model, long tokenEmbeddingWidth, OffloadedWeights weights, ITransferEngine engine, OffloadDirectory? directory, GpuBudget budget, OffloadOptions options)
    {
        this.model = model;
        TokenEmbeddingWidth = tokenEmbeddingWidth;
        this.weights = weights;
        this.engine = engine;
        this.directory = directory;
        this.budget = budget;
        Policy = options.Policy;
        dtype = model.DType.ToScalarType();
    }

    /// <summary>The policy in force.</summary>
    public OffloadPolicy Policy { get; }

    /// <summary>The model's shape.</summary>
    public ModelInfo Info => model.Info;

    /// <summary>The compute device.</summary>
    public Device Device => model.Device;

    /// <summary>The model's architecture code (what DejaVu's selectors and predictors are made for); its weights live in the
    /// offloaded tiers, not in it.</summary>
    internal CausalLanguageModel Model => model;

    /// <summary>DejaVu's contextual sparsity of the steps (null: dense): each GPU batch of a step gets its own selector, which
    /// every stage of that step hands on, so a lookahead predictor's choice for layer ℓ + 1 waits with its batch while the
    /// other batches run layer ℓ. Neuron sparsity reads the down-projections as they are stored (row-major): the transposed
    /// layout an in-memory CUDA model switches to would have to travel with the weights.</summary>
    public IContextualSparsity? Sparsity { get; set; }

    /// <summary>Width of the token embeddings (what a soft prompt's vectors hold), read before the weights were placed.</summary>
    public long TokenEmbeddingWidth { get; }

    /// <summary>The disk tier's private folder, while the model lives (null when nothing is on disk).</summary>
    public string? OffloadPath => directory?.Path;

    /// <summary>Bytes of weights at home on each tier.</summary>
    public long WeightBytesOn(Tier tier) => weights.BytesOn(tier);

    /// <summary>The most bytes Tern has placed on the compute device at once so far (what the GPU cap limits).</summary>
    public long PeakGpuBytes => budget.Peak;

    /// <summary>Loads a Hugging Face model folder (or builds it from config.json with <see cref="ModelLoadOptions.DummyWeights"/>)
    /// and places its weights by <paramref name="options"/>; <see cref="ModelLoadOptions.Progress"/> hears how much of the
    /// weights is loaded (to the host; placing them follows).</summary>
    public static OffloadedModel Load(string modelDirectory, ModelLoadOptions load, OffloadOptions options)
    {
        var config = HfConfig.Load(modelDirectory);
        using IWeightSource source = load.DummyWeights is { } dummy ? DummyWeightSource.Create(dummy) : CheckpointReader.Open(modelDirectory);
        var progress = load.Progress is { } report
            ? new LoadProgress(report, CausalLanguageModel.ElementsToLoad(config, source, load.DummyWeights)) : null;
        return Create(config, source, ComputeOptions.ResolveDevice(load.Device), load.DType, options, progress);
    }

    /// <summary>Builds the model with its weights on the host, then moves each weight to its home tier.</summary>
    public static OffloadedModel Create(HfConfig config, IWeightSource source, Device device, ModelDType dtype, OffloadOptions options) =>
        Create(config, source, device, dtype, options, null);

    static OffloadedModel Create(HfConfig config, IWeightSource source, Device device, ModelDType dtype, OffloadOptions options, LoadProgress? progress)
    {
        var policy = options.Policy.Validate();
        bool usesDisk = policy.Weights.Disk > 0 || policy.Cache.Disk > 0 || policy.Activations.Disk > 0;
        if (usesDisk && options.Directory is null)
            throw new OptionException($"offload policy {policy} puts data on disk; name a folder for it ({TernOption.OffloadDirectory}).");
        var budget = new GpuBudget(options.GpuMemoryLimit);
        OffloadDirectory? directory = null;
        ITransferEngine? engine = null;
        CausalLanguageModel? model = null;
        OffloadedWeights? placed = null;
        try
        {
            directory = usesDisk ? OffloadDirectory.Create(options.Directory!) : null;
            engine = CreateEngine(device, policy.Overlap);
            model = CausalLanguageModel.Create(config, source, device, dtype, trainable: false, weightDevice: torch.CPU, progress);
            progress?.Fraction.Report(1.0);
            if (model.HasRecurrentLayers)
                throw new OptionException($"{TernOption.Offload} streams a model's layers with their KV caches; this {config.ModelType} model keeps a recurrent state per layer, which offloading does not place. Run it in memory.");
            long width = model.TokenEmbeddingWidth; // the host copy of the table goes once placed
            var stageWeights = model.Parts;
            // The GPU share of the weights is checked against the cap before anything moves there, and exactly once placed.
            double bytes = stageWeights.SelectMany(s => s.Tensors).Distinct(ReferenceEqualityComparer.Instance).Cast<Tensor>()
                .Sum(t => (double)t.NumberOfElements * t.ElementSize);
            budget.Reserve("weights", (long)(bytes * policy.Weights.Gpu * (policy.CompressWeights ? CostModel.CompressionRatio * 2 / dtype.ElementSize() : 1)));
            placed = OffloadedWeights.Place(stageWeights, policy.Weights, policy.CompressWeights, device, engine, directory);
            budget.Release("weights");
            budget.Reserve("weights", placed.BytesOn(Tier.Gpu));
            return new OffloadedModel(model, width, placed, engine, directory, budget, options);
        }
        catch
        {
            placed?.Dispose();
            model?.Dispose();
            engine?.Dispose();
            directory?.Dispose();
            throw;
        }
    }

    static ITransferEngine CreateEngine(Device device, bool overlap) => device.type == DeviceType.CUDA
        ? overlap ? new CudaTransferEngine() : new SynchronousTransferEngine(pinsHostMemory: true)
        : overlap ? new BackgroundTransferEngine() : new SynchronousTransferEngine();

    /// <summary>
    /// Greedy generation of <paramref name="maxNewTokens"/> tokens for each prompt (end-of-sequence ignored), in blocks of
    /// gbs·ngb prompts (the last block may be smaller), through the same <see cref="Generation.Generator"/> as any model, the
    /// caches as <paramref name="cache"/> asks (null: the full cache). With <paramref name="keepLogits"/> every step's
    /// next-token logits are returned too.
    /// </summary>
    public OffloadedGeneration Generate(IReadOnlyList<IReadOnlyList<int>> prompts, int maxNewTokens, bool keepLogits = false, KvCacheConfig? cache = null)
    {
        if (prompts.Count == 0) throw new ArgumentException("the batch holds no prompt.");
        var options = new GenerationOptions { MaxNewTokens = maxNewTokens, IgnoreEos = true, OutputLogits = keepLogits, Cache = cache };
        var generator = new Generation.Generator(this);
        var tokens = new List<IReadOnlyList<int>>();
        var logits = new List<Tensor[]>();
        TimeSpan prefill = TimeSpan.Zero, decode = TimeSpan.Zero;
        for (int start = 0; start < prompts.Count; start += Policy.BlockSize)
        {
            var result = generator.GenerateTokens(prompts.Skip(start).Take(Policy.BlockSize).ToArray(), options);
            tokens.AddRange(result.Sequences.Select(s => s.Tokens));
            prefill += result.Stats.Prefill;
            decode += result.Stats.Decode;
            if (result.Logits is { } blockLogits) logits.Add(blockLogits.ToArray());
        }
        Tensor[]? merged = null;
        if (keepLogits)
        {
            // Per step, the blocks' rows in prompt order.
            merged = Enumerable.Range(0, logits[0].Length).Select(i => torch.cat(logits.Select(b => b[i]).ToArray(), 0).DetachFromDisposeScope()).ToArray();
            foreach (var t in logits.SelectMany(b => b)) t.Dispose();
        }
        return new OffloadedGeneration(tokens, merged, prefill, decode);
    }

    /// <inheritdoc />
    public HfConfig Config => model.Config;

    /// <inheritdoc />
    public ModelDType DType => model.DType;

    /// <summary>True when <paramref name="cache"/> is not the plain 16-bit full cache: it evicts, compacts, quantizes or rolls
    /// positions in place and keeps per-entry state, so a batch's cache is one whole <see cref="KvCache"/> — on the compute
    /// device (kv=100/0/0), or in host memory (kv=0/100/0) with each layer copied to the GPU and back around its use — rather
    /// than the append-only homes of the full cache.</summary>
    public static bool NeedsResidentCache(KvCacheConfig? cache) => cache is not null && cache != KvCacheConfig.Full;

    /// <inheritdoc />
    /// <remarks>The batch is one block of at most gbs·ngb sequences, every prompt run as one prefill step. Its caches are the
    /// offload policy's (16-bit, or 4-bit with kvbits=4, split over the tiers by the policy) for the plain full cache, or one
    /// whole cache per GPU batch as <paramref name="cache"/> asks (<see cref="NeedsResidentCache"/>).</remarks>
    public IStepRunner CreateRunner(int batchSize, int maxSequenceLength, int maxStepTokens, KvCacheConfig? cache) =>
        CreateRunner(batchSize, maxSequenceLength, maxStepTokens, cache, null);

    /// <summary>A runner whose rows start with the entries of <paramref name="prompt"/> (a soft prompt's vectors [n, width], or
    /// null): its prefill runs the prompt alone over one row first, stage by stage with the text, as
    /// <see cref="Prompting.PromptedModel"/> prefills it in memory, and every row's cache starts from the entries
    /// <paramref name="cache"/> keeps of it (all n under the full cache; under a policy, what it kept after the prompt's own
    /// step, as a first prefill chunk). The steps' positions count them (text from n on); <paramref name="maxSequenceLength"/>
    /// includes them, and <paramref name="cache"/> comes resolved for it (<see cref="KvCacheConfig.ForSequenceLength"/>), as the
    /// prompt's own one-row cache is sized for the prompt alone.</summary>
    internal IStepRunner CreateRunner(int batchSize, int maxSequenceLength, int maxStepTokens, KvCacheConfig? cache, Tensor? prompt)
    {
        if (batchSize < 1 || batchSize > Policy.BlockSize)
            throw new ArgumentException($"an offloaded batch holds 1 to {Policy.BlockSize} sequences (gbs × ngb of {Policy}); got {batchSize}.");
        if (!NeedsResidentCache(cache))
            return new BlockRunner(this, batchSize, maxSequenceLength, maxStepTokens, new KvCacheConfig(bits: Policy.CompressCache ? 4 : 16), whole: false, prompt);
        if (Policy.Cache.Gpu < 1 && Policy.Cache.Cpu < 1 || Policy.CpuAttention || Policy.CompressCache)
            throw new ArgumentException($"the KV policy '{cache!.Eviction.Name}' ({cache.Bits} bits) runs offloaded with the whole cache on the GPU " +
                $"(kv=100/0/0) or in host memory (kv=0/100/0), without cpu-attn or kvbits; this offload policy is {Policy}.");
        return new BlockRunner(this, batchSize, maxSequenceLength, maxStepTokens, cache!, whole: true, prompt);
    }

    /// <summary>One block of gbs·ngb sequences through the zig-zag schedule, a step at a time: each <see cref="Forward"/> walks
    /// every stage over every GPU batch of the step's rows; loads for the next item are in flight while one computes, across
    /// step boundaries too.</summary>
    sealed class BlockRunner : IStepRunner
    {
        readonly OffloadedModel owner;
        readonly CausalLanguageModel model;
        readonly ITransferEngine engine;
        readonly Device device;
        readonly int stages, batches, rowCount, maxSequenceLength;
        readonly int[] batchRows;                           // [k] sequences of GPU batch k
        readonly int prefillWidth;                          // the activations' slots
        int[][] prompts = null!;                            // [k][row] prompt lengths, known at the first step
        readonly int[] fed;                                 // [row] tokens fed so far
        int step;                                           // steps run so far
        readonly SequenceStore[][][] caches;                // [k][layer][part]: the working cache's storage parts (keys then values), unless attention runs on the CPU
        readonly KvCache[]? hostCaches;                     // [k] with cpu-attn: each batch's cache in host memory, attended there
        readonly List<IntPtr> pinnedHostCaches = new();     // their page-locked storage, so the prefill's entries arrive at copy speed
        readonly SequenceStore[] hidden;                    // [k]
        readonly Tensor[] cachePositions;                   // [k] positions of the working cache's slots
        readonly int[] cacheLength;
        readonly bool[] cacheHoles;
        readonly ForwardBatch?[] inputs;                    // [k] the current step's input
        readonly Dictionary<(int Rows, int Capacity), KvCache> working = new();
        readonly Tensor?[] stepLogits;                      // [k] the head's output of the current step
        readonly ISparsityStep?[] selectors;                // [k] the current step's DejaVu selector (null: dense)
        // In flight: weights per stage, cache and hidden loads per item, the previous item's outputs waiting to be stored.
        readonly Dictionary<int, OffloadedWeights.StageLoad> stageLoads = new();
        readonly Dictionary<int, Tensor[][]> cacheLoads = new();
        readonly Dictionary<int, Tensor[]> hiddenLoads = new();
        readonly List<Action> deferredStores = new();

        /// <param name="config">The block's caches: the plain full cache (16 bits, or the offload policy's kvbits) or, with
        /// <paramref name="whole"/>, another configuration, each GPU batch then keeping a whole <see cref="KvCache"/> as it asks,
        /// on the compute device or in host memory (no per-tier homes).</param>
        /// <param name="maxStepTokens">The widest step (the prefill): the activations' slots.</param>
        /// <param name="prompt">A soft prompt's vectors [n, width] whose entries start every row, or null.</param>
        public BlockRunner(OffloadedModel owner, int rows, int maxSequenceLength, int maxStepTokens, KvCacheConfig config, bool whole, Tensor? prompt)
        {
            this.config = config;
            this.owner = owner;
            model = owner.model;
            engine = owner.engine;
            device = model.Device;
            stages = model.StageCount;
            rowCount = rows;
            this.maxSequenceLength = maxSequenceLength;
            batches = (rows + owner.Policy.GpuBatchSize - 1) / owner.Policy.GpuBatchSize;
            fed = new int[rows];
            caches = new SequenceStore[batches][][];
            hidden = new SequenceStore[batches];
            cachePositions = new Tensor[batches];
            cacheLength = new int[batches];
            cacheHoles = new bool[batches];
            inputs = new ForwardBatch?[batches];
            stepLogits = new Tensor?[batches];
            selectors = new ISparsityStep?[batches];
            hostCaches = owner.Policy.CpuAttention ? new KvCache[batches] : null;
            resident = whole ? new KvCache[batches] : null;
            int gbs = owner.Policy.GpuBatchSize;
            batchRows = Enumerable.Range(0, batches).Select(k => Math.Min(gbs, rows - k * gbs)).ToArray();
            prefillWidth = maxStepTokens;
            promptLength = prompt is null ? 0 : (int)prompt.size(0);
            Allocate(maxStepTokens);
            if (prompt is null) return;
            try
            {
                using var scope = torch.NewDisposeScope();
                promptStep = Prompting.PromptedModel.PromptStep(prompt.clone(), device); // its own vectors: the runner disposes them
                foreach (var t in new[] { promptStep.InputIds, promptStep.Positions, promptStep.PrefixEmbeddings! }) t.DetachFromDisposeScope();
                promptCache = model.CreateCache(1, promptLength, config, maxStepTokens: promptLength); // as PromptedModel's in memory
                if (resident is not null && config.RollPositions) rolledPromptEntries = RollingPromptEntries(config, promptLength);
                // Every row holds the prompt's n entries at positions 0..n−1 before its text.
                foreach (var positions in cachePositions) positions.narrow(2, 0, promptLength).copy_(torch.arange(promptLength, ScalarType.Int64, device));
                Array.Fill(fed, promptLength);
                Array.Fill(cacheLength, promptLength);
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        readonly int promptLength;                          // a soft prompt's entries, first in every row (0: none)
        readonly ForwardBatch? promptStep;                  // its step: the prompt alone over one row, run once with the prefill
        readonly KvCache? promptCache;                      // [layer] its entries, copied into each GPU batch's rows at the prefill
        Tensor? promptHidden;                               // its hidden states between the prefill's stages
        readonly int rolledPromptEntries;                   // under a rolling policy: the prompt's entries each row holds before its text

        readonly KvCacheConfig config;
        readonly KvCache[]? resident;                       // [k] whole caches: each batch's, on the GPU or in host memory
        bool travelling;                                    // whole caches live in host memory and visit the GPU a layer at a time

        public KvCache? Cache => null;

        public void Clear() => throw new NotSupportedException("an offloaded block's caches cannot be cleared and refilled (window re-computation).");

        /// <summary>Sizes and places the block's caches (<see cref="maxSequenceLength"/> slots a sequence, as the plain runtime
        /// sizes its cache) and activations (<paramref name="width"/> slots) when the runner is made, as FlexGen allocates its
        /// cache homes before generating (page-locking tens of GB of host memory takes seconds, not part of the prefill), with
        /// Tern's accounting of what the block puts on the compute device checked before anything is allocated.</summary>
        void Allocate(int width)
        {
            var info = model.Info;
            long[] hiddenItem = { info.HiddenSize };
            var policy = owner.Policy;
            int es = owner.dtype.ElementSize();
            // Tern's accounting of what this block puts on the compute device, checked before anything is allocated.
            long kvGpu = 0, hiddenGpu = 0;
            // Bytes of one slot of one sequence, keys and values, as the cache stores them (codes and pairs when quantized).
            double slotBytes = 2.0 * info.KvHeads * KvStore.EntryBytes(info.HeadDim, config.Bits, es);
            int slots = config.Eviction.Capacity(maxSequenceLength, width);
            foreach (int n in batchRows)
            {
                kvGpu += (long)(info.Layers * slots * policy.Cache.SplitRows(n).Gpu * slotBytes);
                hiddenGpu += (long)width * policy.Activations.SplitRows(n).Gpu * info.HiddenSize * es;
            }
            int rows = batchRows[0], longest = width;
            long workingBytes = 2L * (rows * (long)info.KvHeads * maxSequenceLength * info.HeadDim * es) // working cache keys + values
                + batches * rows * (long)info.KvHeads * maxSequenceLength * 8                   // slot positions
                + 2 * owner.weights.LargestStageLoadBytes                                       // this stage's and the next stage's weights
                + 4L * rows * longest * Math.Max(info.HiddenSize, info.KvHeads * info.HeadDim) * es // hidden in/out and new cache entries
                + 2L * rows * longest * (long)info.KvHeads * info.HeadDim * es * (policy.Cache.Gpu < 1 ? 2 : 1) // loaded cache parts
                + 2L * promptLength * (info.Layers * (long)info.KvHeads * info.HeadDim + info.HiddenSize) * es;  // a soft prompt's entries and hidden states
            owner.budget.Reserve("block", kvGpu + hiddenGpu + workingBytes, $"KV cache {Units.Bytes(kvGpu)}, activations {Units.Bytes(hiddenGpu)}, working buffers {Units.Bytes(workingBytes)}");
            try
            {
                for (int k = 0; k < batches; k++)
                {
                    int n = batchRows[k];
                    caches[k] = new SequenceStore[info.Layers][];
                    if (resident is not null)
                    {
                        travelling = policy.Cache.Gpu < 1;
                        // Sized for decode steps: the prompt is prefilled in a one-layer scratch and what the policy keeps moves in.
                        resident[k] = config.CreateCache(new KvCacheOptions
                        {
                            BatchSize = n, Layers = info.Layers, KvHeads = info.KvHeads, HeadDim = info.HeadDim, DType = owner.dtype,
                            Capacity = config.Eviction.Capacity(maxSequenceLength, 1), MaxSequenceLength = maxSequenceLength,
                            Device = travelling ? torch.CPU : device,
                        });
                        if (travelling && engine.PinsHostMemory)
                            for (int l = 0; l < info.Layers; l++)
                                foreach (var part in resident[k][l].StorageParts)
                                    if (HostBuffer.TryRegister(part, out var pinned)) pinnedHostCaches.Add(pinned);
                    }
                    else if (hostCaches is not null)
                    {
                        hostCaches[k] = KvCache.Create(new KvCacheOptions
                        {
                            BatchSize = n, Layers = info.Layers, KvHeads = info.KvHeads, HeadDim = info.HeadDim, Capacity = maxSequenceLength,
                            DType = owner.dtype, Device = torch.CPU,
                        });
                        if (engine.PinsHostMemory)
                            for (int l = 0; l < info.Layers; l++)
                                foreach (var part in hostCaches[k][l].StorageParts)
                                    if (HostBuffer.TryRegister(part, out var pinned)) pinnedHostCaches.Add(pinned);
                    }
                    else
                    {
                        // One home per storage part of the working cache: [rows, kvHeads, slots, ...] kept slot-major.
                        var parts = WorkingCache(n, maxSequenceLength).StorageParts;
                        for (int l = 0; l < info.Layers; l++)
                            caches[k][l] = parts.Select((part, i) => SequenceStore.Create(n, maxSequenceLength, part.shape.Skip(3).Prepend(part.size(1)).ToArray(),
                                part.dtype, policy.Cache, device, engine, owner.directory, $"kv{i}-b{k}-l{l}")).ToArray();
                    }
                    hidden[k] = SequenceStore.Create(n, width, hiddenItem, owner.dtype, policy.Activations, device, engine, owner.directory, $"h-b{k}");
                    cachePositions[k] = torch.full(new long[] { n, info.KvHeads, maxSequenceLength }, -1L, ScalarType.Int64, device).DetachFromDisposeScope();
                }
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        /// <summary>Item t of the schedule: token step i, stage j, GPU batch k (FlexGen's (i, j, k), zig-zag order).</summary>
        (int I, int J, int K) Item(int t) => (t / (stages * batches), t / batches % stages, t % batches);

        /// <summary>Runs step <see cref="step"/> over every stage and GPU batch; returns the rows' logits in row order.</summary>
        public Tensor Forward(ForwardBatch input)
        {
            if (input.InputIds.size(0) != rowCount)
                throw new ArgumentException($"this offloaded block holds {rowCount} sequences; the step has {input.InputIds.size(0)} rows.");
            if (step == 0)
            {
                if (input.InputIds.size(1) > prefillWidth)
                    throw new ArgumentException($"this offloaded block was made for prompts of at most {prefillWidth} tokens; the prefill has {input.InputIds.size(1)}.");
                int gbs = owner.Policy.GpuBatchSize;
                prompts = Enumerable.Range(0, batches).Select(k => input.RealTokens.Skip(k * gbs).Take(batchRows[k]).ToArray()).ToArray();
            }
            else if (input.InputIds.size(1) != 1) throw new ArgumentException("an offloaded block runs its prompts as one prefill step, then one token per step.");
            if (input.PrefixEmbeddings is not null) throw new ArgumentException("an offloaded block takes a soft prompt when it is made (OffloadedModel.CreateRunner), not with a step.");
            using var noGrad = torch.no_grad();
            int i = step;
            for (int k = 0; k < batches; k++)
            {
                inputs[k] = BatchInput(input, k);
                selectors[k] = owner.Sparsity?.ForStep(inputs[k]!);
            }
            try
            {
                for (int t = i * stages * batches; t < (i + 1) * stages * batches; t++)
                {
                    var (_, j, k) = Item(t);
                    IssueStores();                                       // store the previous batch's cache and activations
                    if (!stageLoads.ContainsKey(j) || (j > 0 && !hiddenLoads.ContainsKey(t)) || (NeedsCache(i, j) && !cacheLoads.ContainsKey(t)))
                    {
                        // The first item, or activations that only now reached their home (fewer than three GPU batches).
                        engine.Synchronize();
                        IssueLoads(t, prefetch: false);
                        engine.Synchronize();
                    }
                    // Load the next stage's weights (the next step's embedding after the head), a share per GPU batch so each item
                    // moves as much as its neighbours (FlexGen loads them whole at the first batch, where they overlap one batch's
                    // compute), and the next batch's cache and activations.
                    int next = (j + 1) % stages;
                    if (!stageLoads.TryGetValue(next, out var load)) stageLoads[next] = load = owner.weights.Begin(next, engine, device);
                    load.IssueThrough((k + 1.0) / batches);
                    IssueLoads(t + 1, prefetch: true);
                    Compute(i, j, k, t);
                    engine.Synchronize();                                // FlexGen's barrier
                    Release(t, j, k);
                }
            }
            finally
            {
                for (int k = 0; k < batches; k++)
                {
                    selectors[k]?.EndStep();
                    selectors[k] = null;
                }
            }
            for (int r = 0; r < rowCount; r++) fed[r] += input.RealTokens[r];
            step++;
            var logits = torch.cat(stepLogits!, 0);
            for (int k = 0; k < batches; k++)
            {
                stepLogits[k]!.Dispose();
                stepLogits[k] = null;
            }
            return logits;
        }


        bool NeedsCache(int i, int j) => hostCaches is null && resident is null && i > 0 && j >= 1 && j < stages - 1;

        /// <summary>Issues the loads of item <paramref name="t"/> not yet in flight: its stage's weights (only when not
        /// prefetching: they are prefetched per stage), its batch's cache and its activations. Activations made by (i, j−1, k)
        /// were stored ngb − 1 items before, so they are prefetched one item ahead only with three or more GPU batches.</summary>
        void IssueLoads(int t, bool prefetch)
        {
            var (i, j, k) = Item(t);
            if (!prefetch && !stageLoads.ContainsKey(j))
            {
                stageLoads[j] = owner.weights.Begin(j, engine, device);
                stageLoads[j].IssueThrough(1);
            }
            if (NeedsCache(i, j) && !cacheLoads.ContainsKey(t))
            {
                cacheLoads[t] = caches[k][j - 1].Select(home => home.Load(engine, device, 0, cacheLength[k])).ToArray();
            }
            if (j > 0 && !hiddenLoads.ContainsKey(t) && (!prefetch || batches > 2))
                hiddenLoads[t] = hidden[k].Load(engine, device, 0, StepTokens(i, k));
        }

        int StepTokens(int i, int k) => i == 0 ? prompts[k].Max() : 1;

        void IssueStores()
        {
            foreach (var store in deferredStores) store();
            deferredStores.Clear();
        }

        void Compute(int i, int j, int k, int t)
        {
            using var scope = torch.NewDisposeScope();
            var batch = inputs[k]!;
            var w = stageLoads[j].Weights;
            Tensor? h = null;
            if (j > 0)
            {
                // [tokens, rows, hidden] to [rows, tokens, hidden] with standard strides (a size-1 dimension keeps an odd stride
                // through contiguous(), and GEMM kernels pick other blockings for it: the logits would move in the last bit).
                var slotMajor = SequenceStore.Assemble(hiddenLoads[t]);
                h = slotMajor.transpose(0, 1).contiguous().reshape(-1).view(slotMajor.size(1), slotMajor.size(0), -1);
            }
            // The prompt runs alone through each stage before the stage's first GPU batch needs its entries.
            if (i == 0 && k == 0 && promptStep is not null && j < stages - 1) RunPrompt(j, w);
            if (j == stages - 1)
            {
                stepLogits[k] = model.RunStage(j, w, h, batch, null, selectors[k]).DetachFromDisposeScope();
                cacheLength[k] += StepTokens(i, k);
                return;
            }
            Tensor output;
            if (j == 0) output = model.RunStage(0, w, null, batch, null);
            else if (resident is not null)
            {
                // A travelling layer is copied to the GPU's working layer and runs there; back go the step's new entries, or
                // everything when the policy evicted (compaction moves entries).
                var home = resident[k][j - 1];
                var layer = travelling ? WorkingCache(prompts[k].Length, home.Capacity, home.MaxSequenceLength) : home;
                if (travelling) layer.CopyEntriesFrom(home);
                int rewrites = layer.Rewrites;
                output = i > 0 ? model.RunStage(j, w, h, batch, layer, selectors[k]) : PrefillResident(j, w, h!, batch, k, layer);
                if (travelling) home.CopyEntriesFrom(layer, i == 0 || layer.Rewrites != rewrites ? 0 : home.Length);
            }
            else if (hostCaches is not null && i > 0) output = model.RunStage(j, w, h, batch, hostCaches[k][j - 1], selectors[k]); // attends on the CPU
            else
            {
                var cache = WorkingCache(prompts[k].Length, maxSequenceLength);
                int length = cacheLength[k];
                if (i == 0 && promptCache is not null)
                {
                    // The prefill starts from the prompt's entries in every row; they go home with the step's own.
                    var parts = cache.StorageParts;
                    var promptParts = promptCache[j - 1].StorageParts;
                    for (int p = 0; p < parts.Count; p++) parts[p].narrow(2, 0, length).copy_(promptParts[p].narrow(2, 0, length));
                }
                else if (length > 0)
                {
                    // Loaded slot-major [length, rows, kvHeads, ...]; the cache holds [rows, kvHeads, slots, ...].
                    var parts = cache.StorageParts;
                    for (int p = 0; p < parts.Count; p++)
                        parts[p].narrow(2, 0, length).copy_(SequenceStore.Assemble(cacheLoads[t][p]).movedim(new long[] { 0 }, new long[] { 2 }));
                }
                cache.Positions.copy_(cachePositions[k]);
                cache.Restore(length, cacheHoles[k]);
                output = model.RunStage(j, w, h, batch, cache, selectors[k]);
                if (j == 1) cachePositions[k].copy_(cache.Positions);
                StoreNewEntries(k, j - 1, cache, i == 0 ? 0 : length);
            }
            var outputs = output.transpose(0, 1).contiguous().DetachFromDisposeScope(); // [tokens, rows, hidden]
            var store = hidden[k];
            deferredStores.Add(() => store.Store(engine, outputs, 0));
        }

        /// <summary>Block stage <paramref name="j"/> (or the embedding) over the prompt alone, one row, into its own cache: the
        /// same step as <see cref="Prompting.PromptedModel"/>'s prefill in memory, so its entries are the same.</summary>
        void RunPrompt(int j, PartWeights w)
        {
            using var scope = torch.NewDisposeScope();
            var layer = j == 0 ? null : promptCache![j - 1];
            var h = model.RunStage(j, w, promptHidden, promptStep!, layer).DetachFromDisposeScope();
            promptHidden?.Dispose();
            promptHidden = j == stages - 2 ? null : h; // the head needs no prompt logits
            if (promptHidden is null) h.Dispose();
            if (layer is null || config.Eviction.AppendOnly) return;
            layer.Compact(); // as PromptedModel's prefix: slots the policy freed are not copied into every row
            if (j == 1 && config.RollPositions && layer.EntryCounts()[0, 0].item<long>() is var kept && kept != rolledPromptEntries)
                throw new InvalidOperationException($"the KV policy '{config.Eviction.Name}' kept {kept} of the soft prompt's entries in layer 0, not the {rolledPromptEntries} " +
                    "its positions alone gave, which the text's positions counted: a policy that positions by cache index must evict by position alone.");
        }

        /// <summary>Entries a rolling policy (<see cref="KvCacheConfig.RollPositions"/>) keeps of a soft prompt of
        /// <paramref name="tokens"/> run alone, which the text's positions count from the prefill's embedding stage on, before a
        /// layer has run the prompt. Such a policy evicts by position, alike in every layer and head (what lets positions be read
        /// from one), so its choice over the prompt's positions in a one-head cache of placeholder entries is its layers' choice
        /// (checked once layer 0 has run the prompt).</summary>
        static int RollingPromptEntries(KvCacheConfig config, int tokens)
        {
            using var scope = torch.NewDisposeScope();
            using var cache = (config with { Bits = 16 }).CreateCache(new KvCacheOptions
            {
                BatchSize = 1, Layers = 1, KvHeads = 1, HeadDim = 1, Capacity = tokens, MaxSequenceLength = tokens, DType = ScalarType.Float32, Device = torch.CPU,
            });
            var placeholders = torch.zeros(1, 1, tokens, 1);
            cache[0].Update(placeholders, placeholders, torch.arange(tokens, ScalarType.Int64).unsqueeze(0), hasPadding: false);
            cache[0].EndStep();
            return (int)cache[0].EntryCounts()[0, 0].item<long>();
        }

        /// <summary>A resident cache's prefill: the layer attends densely over the prompt in a scratch cache under the policy
        /// (which evicts down to its budget after the step, as it would in place), and the entries it keeps, with their policy
        /// state, move into the batch's cache, which needs no room for the whole prompt. A soft prompt's kept entries start
        /// every row of the scratch, as the in-memory prompted model's cache starts from them.</summary>
        Tensor PrefillResident(int j, PartWeights w, Tensor h, ForwardBatch batch, int k, LayerKvCache layer)
        {
            var info = model.Info;
            int width = (int)batch.InputIds.size(1);
            using var scratch = config.CreateCache(new KvCacheOptions
            {
                BatchSize = prompts[k].Length, Layers = 1, KvHeads = info.KvHeads, HeadDim = info.HeadDim, DType = owner.dtype, Device = device,
                Capacity = config.Eviction.Capacity(maxSequenceLength, width), MaxSequenceLength = maxSequenceLength,
            });
            if (promptCache is not null) scratch[0].ImportRows(0, promptCache[j - 1], 0, prompts[k].Length, 0, promptCache[j - 1].Length);
            var output = model.RunStage(j, w, h, batch, scratch[0], selectors[k]);
            // Slot for slot (left padding included), as the plain runtime holds them: the policy left at most its budget.
            layer.ImportRows(0, scratch[0], 0, prompts[k].Length, 0, scratch.Length);
            return output;
        }

        /// <summary>Sends the entries a block stage appended to the working cache to their home: deferred to the next item for
        /// the tiers (FlexGen's store_cache(prev)); with CPU attention, the prefill's entries go to the host cache the same way.</summary>
        void StoreNewEntries(int k, int layer, LayerKvCache cache, int length)
        {
            int added = cache.Length - length;
            if (hostCaches is not null)
            {
                // Prefill attends on the GPU (FlexGen too); decode then attends where this copy lives.
                var home = hostCaches[k][layer];
                var sources = new[] { cache.Keys, cache.Values }.Select(t => t.narrow(2, 0, added).contiguous().DetachFromDisposeScope()).ToArray();
                var targets = new[] { home.Keys, home.Values }.Select(t => t.narrow(2, 0, added).DetachFromDisposeScope()).ToArray();
                home.Positions.copy_(cache.Positions);
                home.Restore(added, cacheHoles[k]); // read first in decode, long after the stores below have landed
                deferredStores.Add(() =>
                {
                    // Into a page-locked staging tensor on the copy stream, then into the cache's slots on a worker (the slot
                    // range is strided in the host cache: a direct copy would go through pageable memory, synchronously).
                    for (int p = 0; p < 2; p++)
                    {
                        var (source, target) = (sources[p], targets[p]);
                        var staging = TierBuffer.Staging(engine, source.NumberOfElements, source.dtype);
                        engine.Copy(staging, source);
                        engine.KeepAlive(source);
                        engine.KeepAlive(target);
                        engine.Enqueue(() =>
                        {
                            using var entries = staging.view(target.shape);
                            target.copy_(entries);
                        });
                    }
                });
                return;
            }
            // Slot-major [added, rows, kvHeads, ...], as the homes hold them; codes move as codes, so they never re-quantize.
            var entries = cache.StorageParts.Select(part => part.narrow(2, length, added).movedim(new long[] { 2 }, new long[] { 0 }).contiguous().DetachFromDisposeScope()).ToArray();
            var homes = caches[k][layer];
            deferredStores.Add(() =>
            {
                for (int p = 0; p < homes.Length; p++) homes[p].Store(engine, entries[p], length);
            });
        }

        /// <summary>The one-layer cache a block stage computes with on the compute device (one per batch shape, under the
        /// block's KV policy), filled from the homes — or from a travelling policy layer — before each use.</summary>
        LayerKvCache WorkingCache(int rows, int capacity, int maxSequenceLength = 0)
        {
            if (!working.TryGetValue((rows, capacity), out var cache))
            {
                var info = model.Info;
                working[(rows, capacity)] = cache = config.CreateCache(new KvCacheOptions
                {
                    BatchSize = rows, Layers = 1, KvHeads = info.KvHeads, HeadDim = info.HeadDim, Capacity = capacity,
                    MaxSequenceLength = maxSequenceLength, DType = owner.dtype, Device = device,
                });
            }
            return cache[0];
        }

        /// <summary>GPU batch k's rows of the step; a prefill drops the leading columns that are padding in every one of its rows,
        /// so each GPU batch is padded to its own longest prompt, as the plain runtime would run it alone.</summary>
        ForwardBatch BatchInput(ForwardBatch input, int k)
        {
            if (inputs[k] is { } previous)
            {
                previous.InputIds.Dispose();
                previous.Positions.Dispose();
            }
            int first = k * owner.Policy.GpuBatchSize, n = prompts[k].Length;
            var real = input.RealTokens.Skip(first).Take(n).ToArray();
            int width = (int)input.InputIds.size(1), columns = step == 0 ? real.Max() : width;
            var batch = new ForwardBatch
            {
                // Own tensors with standard strides: the fused CUDA kernels take contiguous inputs only (a view would send them to
                // the composite fallback, which rounds differently from the plain runtime).
                InputIds = input.InputIds.narrow(0, first, n).narrow(1, width - columns, columns).contiguous().clone(),
                Positions = input.Positions.narrow(0, first, n).narrow(1, width - columns, columns).contiguous().clone(),
                RealTokens = real,
                HasPadding = real.Any(r => r < columns),
                MaxPosition = fed.Skip(first).Take(n).Max() + columns - 1,
                LastPositionOnly = input.LastPositionOnly,
            };
            if (step == 0) cacheHoles[k] = batch.HasPadding;
            batch.InputIds.DetachFromDisposeScope();
            batch.Positions.DetachFromDisposeScope();
            if (resident is null || !config.RollPositions) return batch;
            // Positions by cache index (StreamingLLM), from the entries this batch's cache holds before the step: at the prefill,
            // a soft prompt's (its layers' scratches receive them, not the batch's cache).
            if (step > 0 || promptStep is null) return CausalLanguageModel.AtCacheIndexes(batch, resident[k]);
            using var held = torch.tensor((long)rolledPromptEntries, device: device);
            return CausalLanguageModel.AtCacheIndexes(batch, held, resident[k][0].Capacity);
        }

        void Release(int t, int j, int k)
        {
            if (cacheLoads.Remove(t, out var c)) foreach (var p in c.SelectMany(l => l)) p.Dispose();
            if (hiddenLoads.Remove(t, out var h)) foreach (var p in h) p.Dispose();
            // A stage's weights serve all its GPU batches, then go (FlexGen donates the buffer after the last batch).
            if (k == batches - 1 && stageLoads.Remove(j, out var w)) w.Dispose();
        }

        public void Dispose()
        {
            try
            {
                engine.Synchronize();
            }
            finally
            {
                deferredStores.Clear();
                foreach (var w in stageLoads.Values) w.Dispose();
                foreach (var p in cacheLoads.Values.SelectMany(l => l).SelectMany(l => l)) p.Dispose();
                foreach (var h in hiddenLoads.Values) foreach (var p in h) p.Dispose();
                foreach (var s in caches.Where(c => c is not null).SelectMany(c => c).Where(l => l is not null).SelectMany(l => l)) s?.Dispose();
                foreach (var s in hidden) s?.Dispose();
                foreach (var p in cachePositions) p?.Dispose();
                foreach (var c in working.Values) c.Dispose();
                foreach (var p in pinnedHostCaches) Interop.CudaDriver.UnregisterHostMemory(p);
                if (hostCaches is not null) foreach (var c in hostCaches) c?.Dispose();
                foreach (var b in inputs) { b?.InputIds.Dispose(); b?.Positions.Dispose(); }
                foreach (var t in stepLogits) t?.Dispose();
                if (resident is not null) foreach (var c in resident) c?.Dispose();
                promptCache?.Dispose();
                promptHidden?.Dispose();
                foreach (var t in new[] { promptStep?.InputIds, promptStep?.Positions, promptStep?.PrefixEmbeddings }) t?.Dispose();
                owner.budget.Release("block");
            }
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        try
        {
            engine.Dispose();
        }
        finally
        {
            weights.Dispose();
            model.Dispose();
            directory?.Dispose();
        }
    }
}
