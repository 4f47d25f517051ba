using Tern.Caching;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Prompting;

/// <summary>
/// A model that runs every sequence after a soft prompt: the prompt's keys and values are computed once, when this is made,
/// and every runner's cache starts from a copy of them (pitfall 7: no n extra positions of prefill per request). Text
/// positions start at n, after the prompt's. Generation and evaluation step it like any <see cref="IStepModel"/>; the
/// generation loop knows nothing of prompts. Full caches only (an eviction policy could evict the prompt).
/// </summary>
public sealed class PromptedModel : IStepModel, IDisposable
{
    readonly CausalLanguageModel model;
    readonly (Tensor Keys, Tensor Values)[] prefix; // per layer, [1, kvHeads, n, headDim]
    readonly int n;
    bool ownsModel;

    PromptedModel(CausalLanguageModel model, (Tensor, Tensor)[] prefix, int n)
    {
        this.model = model;
        this.prefix = prefix;
        this.n = n;
        Info = model.Info with { MaxPositions = model.Info.MaxPositions - n };
    }

    /// <summary>Prefills <paramref name="prompt"/> through <paramref name="model"/> once. The model is borrowed unless
    /// <paramref name="ownModel"/>, in which case disposing this disposes it.</summary>
    public static PromptedModel Create(CausalLanguageModel model, SoftPrompt prompt, bool ownModel = false)
    {
        var prompted = Prefill(model, prompt);
        prompted.ownsModel = ownModel;
        return prompted;
    }

    static PromptedModel Prefill(CausalLanguageModel model, SoftPrompt prompt)
    {
        int n = prompt.Length;
        if (n >= model.Info.MaxPositions)
            throw new OptionException($"{TernOption.SoftPromptFile}: a prompt of {n} vectors leaves no room in the model's {model.Info.MaxPositions} positions.");
        var prefix = new (Tensor, Tensor)[model.Info.Layers];
        if (n == 0)
        {
            for (int l = 0; l < prefix.Length; l++) prefix[l] = (torch.empty(0).DetachFromDisposeScope(), torch.empty(0).DetachFromDisposeScope());
            return new PromptedModel(model, prefix, 0);
        }
        using var cache = model.CreateCache(1, n, maxStepTokens: n);
        using (var scope = torch.NewDisposeScope())
        {
            var batch = new ForwardBatch
            {
                InputIds = torch.zeros(1, n, ScalarType.Int64, model.Device), // placeholders under the prompt
                Positions = torch.arange(n, ScalarType.Int64, model.Device).unsqueeze(0),
                RealTokens = new[] { n },
                MaxPosition = n - 1,
                LastPositionOnly = true,
                PrefixEmbeddings = prompt.Embeddings.to(model.Device),
            };
            model.Forward(batch, cache);
        }
        for (int l = 0; l < prefix.Length; l++)
            prefix[l] = (cache[l].ActiveKeys.clone().DetachFromDisposeScope(), cache[l].ActiveValues.clone().DetachFromDisposeScope());
        return new PromptedModel(model, prefix, n);
    }

    /// <summary>The model's shape, its context shortened by the prompt's n positions.</summary>
    public ModelInfo Info { get; }

    /// <summary>Positions the prompt takes.</summary>
    public int PromptLength => n;

    /// <inheritdoc />
    public HfConfig Config => model.Config;

    /// <inheritdoc />
    public Device Device => model.Device;

    /// <inheritdoc />
    public ModelDType DType => model.DType;

    /// <inheritdoc />
    public IStepRunner CreateRunner(int batchSize, int maxSequenceLength, int maxStepTokens, KvCacheConfig? cache)
    {
        if (cache is not null && cache != KvCacheConfig.Full)
            throw new OptionException($"{TernOption.SoftPromptFile}: a soft prompt runs with the full KV cache (its entries must not be evicted or quantized); leave {TernOption.KvPolicy} at full.");
        var runner = new Runner(this, model.CreateCache(batchSize, maxSequenceLength + n, KvCacheConfig.Full, maxStepTokens));
        runner.Clear();
        return runner;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var (k, v) in prefix)
        {
            k.Dispose();
            v.Dispose();
        }
        if (ownsModel) model.Dispose();
    }

    /// <summary>Steps over a cache that holds the prompt's entries first; text positions shifted by n.</summary>
    sealed class Runner(PromptedModel owner, KvCache cache) : IStepRunner
    {
        /// <summary>None: graph capture and other direct cache users would not know of the prompt's entries.</summary>
        public KvCache? Cache => null;

        public Tensor Forward(ForwardBatch step)
        {
            if (step.WriteSlots is not null) throw new InvalidOperationException("a prompted model runs eagerly (no static-shape steps).");
            if (owner.n == 0) return owner.model.Forward(step, cache);
            using var scope = torch.NewDisposeScope();
            var shifted = new ForwardBatch
            {
                InputIds = step.InputIds,
                Positions = torch.where(step.Positions.ge(0), step.Positions + owner.n, step.Positions),
                RealTokens = step.RealTokens,
                HasPadding = step.HasPadding,
                MaxPosition = step.MaxPosition + owner.n,
                LastPositionOnly = step.LastPositionOnly,
            };
            return owner.model.Forward(shifted, cache).MoveToOuterDisposeScope();
        }

        /// <summary>Back to the prompt alone in every row.</summary>
        public void Clear()
        {
            cache.Clear();
            if (owner.n == 0) return;
            using var scope = torch.NewDisposeScope();
            int rows = cache.Options.BatchSize;
            var positions = torch.arange(owner.n, ScalarType.Int64, owner.model.Device).unsqueeze(0).expand(rows, owner.n);
            for (int l = 0; l < cache.LayerCount; l++)
            {
                var (k, v) = owner.prefix[l];
                cache[l].Append(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), positions, hasPadding: false);
            }
            cache.Advance(Enumerable.Repeat(owner.n, rows).ToArray());
        }

        public void Dispose() => cache.Dispose();
    }
}
