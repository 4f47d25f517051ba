using Tern.Caching;
using Tern.Checkpoints;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// Runs forward steps over one batch of sequences and owns their per-layer state (KV caches, wherever those live): what
/// generation, evaluation and serving step. A plain model runs each step through its layers over an in-memory
/// <see cref="KvCache"/>; an offloaded model runs it through FlexGen's zig-zag schedule over its GPU batches, its caches at
/// their home tiers. Callers build the step (<see cref="ForwardBatch"/>); the runner knows how to execute it.
/// </summary>
public interface IStepRunner : IDisposable
{
    /// <summary>The in-memory cache the steps run over, when there is one (CUDA graphs capture steps over it); null when the
    /// state lives elsewhere (offloaded).</summary>
    KvCache? Cache { get; }

    /// <summary>Runs one step (a prefill chunk or a decode step) over every row, appending to the rows' state; returns logits
    /// as <see cref="CausalLanguageModel.Forward(ForwardBatch, KvCache)"/> does, on the compute device.</summary>
    Tensor Forward(ForwardBatch step);

    /// <summary>Empties every row's state (StreamingLLM's re-computation baseline then re-runs a window into it).</summary>
    void Clear();
}

/// <summary>A model that generation, evaluation and serving can step: it makes <see cref="IStepRunner"/>s for batches of
/// sequences. Implemented by <see cref="CausalLanguageModel"/> (in memory) and by the offloaded model.</summary>
public interface IStepModel
{
    /// <summary>The model's shape.</summary>
    ModelInfo Info { get; }

    /// <summary>The config it was built from (end-of-sequence ids, ...).</summary>
    HfConfig Config { get; }

    /// <summary>The compute device.</summary>
    Device Device { get; }

    /// <summary>Weight and activation type (what the cache stores).</summary>
    Runtime.ModelDType DType { get; }

    /// <summary>A runner for <paramref name="batchSize"/> sequences of at most <paramref name="maxSequenceLength"/> tokens, fed in
    /// steps of at most <paramref name="maxStepTokens"/> tokens, their caches as <paramref name="cache"/> asks (null = full).</summary>
    IStepRunner CreateRunner(int batchSize, int maxSequenceLength, int maxStepTokens, KvCacheConfig? cache);
}

/// <summary>The plain runner: a <see cref="CausalLanguageModel"/> over an in-memory <see cref="KvCache"/> it owns.</summary>
internal sealed class CacheRunner(CausalLanguageModel model, KvCache cache) : IStepRunner
{
    public KvCache Cache => cache;
    public Tensor Forward(ForwardBatch step) => model.Forward(step, cache);
    public void Clear() => cache.Clear();
    public void Dispose() => cache.Dispose();
}
