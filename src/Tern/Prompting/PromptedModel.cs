using Tern.Caching;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Offloading;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Prompting;

/// <summary>
/// A model that runs every sequence after a soft prompt: the prompt's keys and values are computed once per KV cache
/// configuration (<see cref="ImportPrefix"/>), and every runner's cache, like every serving row, starts from a copy of them
/// (pitfall 7: no n extra positions of prefill per request). Text positions start at n, after the prompt's. Generation and
/// evaluation step it like any <see cref="IStepModel"/>; the generation loop knows nothing of prompts.
/// </summary>
/// <remarks>
/// <para>Under a KV policy the prompt's entries are what a sequence under that policy keeps after prefilling the prompt alone, as a
/// first prefill chunk (its own attention is full causal, then the policy evicts, quantizes or records scores as it does after
/// any step); from then on they are entries like any other: a sink keeps the prompt's first vectors as its sinks, a window or
/// H2O may evict them as the sequence grows, and a quantized cache stores them quantized.</para>
/// <para>An offloaded model (<see cref="Create(OffloadedModel, SoftPrompt, bool)"/>) keeps its blocks' caches at the policy's
/// homes and streams its weights, so nothing is prefilled ahead: each block's prefill first runs the prompt alone over one row
/// (<see cref="PromptStep"/>, the step prefilled here in memory, under the same resolved configuration), stage by stage with
/// the text, and every row's cache starts from the entries it keeps; text positions are shifted as here. Every KV configuration
/// the offloaded model runs composes: a policy or quantized cache there is each GPU batch's whole cache, on the GPU or in host
/// memory, whose prefill starts from the prompt's kept entries.</para>
/// </remarks>
public sealed class PromptedModel : IStepModel, IDisposable
{
    /// <summary>Cache configurations whose prefixes are kept; ratio budgets resolve per sequence length, so a server may meet
    /// many: the least recently used beyond these are dropped (and prefilled again if met again).</summary>
    const int KeptConfigurations = 16;

    readonly IStepModel inner;         // what runs the steps
    readonly CausalLanguageModel? model; // in memory: the prompt's entries are prefilled once and copied; null when offloaded
    readonly SoftPrompt prompt; // a copy of the caller's, owned
    readonly int n;
    readonly LinkedList<(KvCacheConfig Config, KvCache Prefix)> prefixes = new(); // most recently used first
    bool ownsModel;

    PromptedModel(IStepModel inner, CausalLanguageModel? model, SoftPrompt prompt)
    {
        this.inner = inner;
        this.model = model;
        this.prompt = prompt;
        n = prompt.Length;
        Info = inner.Info with { MaxPositions = inner.Info.MaxPositions - n };
    }

    /// <summary>A copy of <paramref name="prompt"/>, checked against a model of that token-embedding width and context.</summary>
    static SoftPrompt Checked(SoftPrompt prompt, long tokenEmbeddingWidth, ModelInfo info)
    {
        if (prompt.Embeddings.size(1) != tokenEmbeddingWidth)
            throw new OptionException($"{TernOption.SoftPromptFile}: the prompt's vectors are {prompt.Embeddings.size(1)} wide; this model's token embeddings are {tokenEmbeddingWidth} wide.");
        if (prompt.Length >= info.MaxPositions)
            throw new OptionException($"{TernOption.SoftPromptFile}: a prompt of {prompt.Length} vectors leaves no room in the model's {info.MaxPositions} positions.");
        return SoftPrompt.FromTensor(prompt.Embeddings, prompt.Metadata);
    }

    /// <summary>Wraps <paramref name="model"/> with <paramref name="prompt"/> (copied: the caller keeps its own) and prefills the
    /// prompt under the full cache. The model is borrowed unless <paramref name="ownModel"/>, in which case disposing this
    /// disposes it.</summary>
    public static PromptedModel Create(CausalLanguageModel model, SoftPrompt prompt, bool ownModel = false)
    {
        var prompted = new PromptedModel(model, model, Checked(prompt, model.TokenEmbeddingWidth, model.Info));
        try
        {
            if (prompted.n > 0)
                lock (prompted.prefixes) prompted.Prefix(KvCacheConfig.Full);
        }
        catch
        {
            prompted.Dispose();
            throw;
        }
        prompted.ownsModel = ownModel;
        return prompted;
    }

    /// <summary>Wraps the offloaded <paramref name="model"/> with <paramref name="prompt"/> (copied): nothing is prefilled here,
    /// each block's prefill runs the prompt once before its text, under the block's KV configuration. The model is borrowed
    /// unless <paramref name="ownModel"/>.</summary>
    public static PromptedModel Create(OffloadedModel model, SoftPrompt prompt, bool ownModel = false) =>
        new(model, null, Checked(prompt, model.TokenEmbeddingWidth, model.Info)) { ownsModel = ownModel };

    /// <summary>The model's shape, its context shortened by the prompt's n positions.</summary>
    public ModelInfo Info { get; }

    /// <summary>Positions the prompt takes.</summary>
    public int PromptLength => n;

    /// <inheritdoc />
    public HfConfig Config => inner.Config;

    /// <inheritdoc />
    public Device Device => inner.Device;

    /// <inheritdoc />
    public ModelDType DType => inner.DType;

    /// <summary>The configuration a runner or serving row for sequences of at most <paramref name="maxSequenceLength"/> text
    /// tokens uses: <paramref name="cache"/> with its ratio budgets resolved for the prompt's entries plus the text.</summary>
    public KvCacheConfig Resolve(KvCacheConfig? cache, int maxSequenceLength) => (cache ?? KvCacheConfig.Full).ForSequenceLength(maxSequenceLength + n);

    /// <inheritdoc />
    public IStepRunner CreateRunner(int batchSize, int maxSequenceLength, int maxStepTokens, KvCacheConfig? cache)
    {
        var config = Resolve(cache, maxSequenceLength);
        if (model is null)
        {
            var offloaded = ((OffloadedModel)inner).CreateRunner(batchSize, maxSequenceLength + n, maxStepTokens, config, n == 0 ? null : prompt.Embeddings);
            return n == 0 ? offloaded : new OffloadedRunner(n, offloaded);
        }
        var runner = new Runner(this, model.CreateCache(batchSize, maxSequenceLength + n, config, maxStepTokens), config);
        try
        {
            runner.Clear();
        }
        catch
        {
            runner.Dispose();
            throw;
        }
        return runner;
    }

    /// <summary>
    /// Copies the prompt's entries under <paramref name="config"/> (resolved: <see cref="Resolve"/>) into the empty rows
    /// [<paramref name="firstRow"/>, + <paramref name="rows"/>) of <paramref name="cache"/>, with the policy state they carry; the
    /// first time a configuration is met, the prompt is prefilled under it (safe to call from any thread).
    /// </summary>
    internal void ImportPrefix(KvCache cache, int firstRow, int rows, KvCacheConfig config)
    {
        if (n == 0) return;
        if (model is null) throw new InvalidOperationException("an offloaded model's prompt is prefilled with each block's text; no entries are kept to copy.");
        lock (prefixes) cache.ImportIntoRows(firstRow, rows, Prefix(config));
    }

    /// <summary>The prompt's entries under <paramref name="config"/> in a one-row cache, prefilled the first time.</summary>
    KvCache Prefix(KvCacheConfig config)
    {
        for (var node = prefixes.First; node is not null; node = node.Next)
        {
            if (!node.Value.Config.Equals(config)) continue;
            prefixes.Remove(node);
            prefixes.AddFirst(node);
            return node.Value.Prefix;
        }
        var cache = model!.CreateCache(1, n, config, maxStepTokens: n);
        try
        {
            using var scope = torch.NewDisposeScope();
            model.Forward(PromptStep(prompt.Embeddings, model.Device), cache);
            if (!config.Eviction.AppendOnly) cache.Compact(); // slots a policy freed are not copied into every row
        }
        catch
        {
            cache.Dispose();
            throw;
        }
        prefixes.AddFirst((config, cache));
        if (prefixes.Count > KeptConfigurations)
        {
            prefixes.Last!.Value.Prefix.Dispose();
            prefixes.RemoveLast();
        }
        return cache;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (prefixes)
        {
            foreach (var (_, prefix) in prefixes) prefix.Dispose();
            prefixes.Clear();
        }
        prompt.Dispose();
        if (ownsModel) (inner as IDisposable)?.Dispose();
    }

    /// <summary>Steps over a cache that holds the prompt's entries first; text positions shifted by n.</summary>
    sealed class Runner(PromptedModel owner, KvCache cache, KvCacheConfig config) : IStepRunner
    {
        /// <summary>None: graph capture and other direct cache users would not know of the prompt's entries.</summary>
        public KvCache? Cache => null;

        public Tensor Forward(ForwardBatch step)
        {
            if (step.WriteSlots is not null) throw new InvalidOperationException("a prompted model runs eagerly (no static-shape steps).");
            if (owner.n == 0) return owner.model!.Forward(step, cache);
            using var scope = torch.NewDisposeScope();
            return owner.model!.Forward(Shifted(step, owner.n), cache).MoveToOuterDisposeScope();
        }

        /// <summary>Back to the prompt alone in every row.</summary>
        public void Clear()
        {
            cache.Clear();
            owner.ImportPrefix(cache, 0, cache.Options.BatchSize, config);
        }

        public void Dispose() => cache.Dispose();
    }

    /// <summary>The step that prefills a prompt of vectors <paramref name="embeddings"/> [n, width] alone, one row, on
    /// <paramref name="device"/> (in memory here, per block when offloaded).</summary>
    internal static ForwardBatch PromptStep(Tensor embeddings, Device device)
    {
        int n = (int)embeddings.size(0);
        return new ForwardBatch
        {
            InputIds = torch.zeros(1, n, ScalarType.Int64, device), // placeholders under the prompt
            Positions = torch.arange(n, ScalarType.Int64, device).unsqueeze(0),
            RealTokens = new[] { n },
            MaxPosition = n - 1,
            LastPositionOnly = true,
            PrefixEmbeddings = embeddings.to(device),
        };
    }

    /// <summary>Steps an offloaded block whose rows start from the prompt's entries: text positions shifted by n.</summary>
    sealed class OffloadedRunner(int n, IStepRunner inner) : IStepRunner
    {
        /// <summary>None: the state lives with the offloaded block.</summary>
        public KvCache? Cache => null;

        public Tensor Forward(ForwardBatch step)
        {
            using var scope = torch.NewDisposeScope();
            return inner.Forward(Shifted(step, n)).MoveToOuterDisposeScope();
        }

        public void Clear() => inner.Clear();

        public void Dispose() => inner.Dispose();
    }

    /// <summary><paramref name="step"/> with its real positions moved <paramref name="offset"/> on (padding stays -1): text after
    /// a prompt of that many entries.</summary>
    static ForwardBatch Shifted(ForwardBatch step, int offset) => new()
    {
        InputIds = step.InputIds,
        Positions = torch.where(step.Positions.ge(0), step.Positions + offset, step.Positions),
        RealTokens = step.RealTokens,
        HasPadding = step.HasPadding,
        MaxPosition = step.MaxPosition + offset,
        LastPositionOnly = step.LastPositionOnly,
    };
}
