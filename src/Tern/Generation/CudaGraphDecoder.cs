using Tern.Caching;
using Tern.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Generation;

/// <summary>
/// The generator's decode steps as one CUDA-graph replay each (<see cref="StepGraph"/>): the whole step — forward pass,
/// arg-max, and the update of its own inputs — launches as a single graph.
/// </summary>
internal sealed class CudaGraphDecoder : IDisposable
{
    readonly IStepRunner runner;
    readonly Sampler sampler;
    readonly Tensor ids, positions, slot, finished, pad;
    readonly int[] ones;
    readonly int maxPosition;
    readonly StepGraph graph;

    /// <summary>True when graphs can serve this request: CUDA, libtorch's graph symbols found, an in-memory 16-bit cache (any
    /// policy that evicts in place: its eviction steps run eagerly), no window re-computation (which clears and refills the
    /// cache) and a deterministic sampler that reads nothing back (no constraint, no logprobs).</summary>
    public static bool CanServe(IStepRunner runner, Device device, GenerationOptions options) =>
        runner.Cache is { } cache && options.Temperature == 0 && StepGraph.Serves(cache) && options.RecomputeWindow is null
        && options.Constraint is null && options.Logprobs is null
        && (options.ForceStaticShapes || options.UseCudaGraphs && StepGraph.CanCapture(device));

    /// <param name="first">The token sampled from the prefill, [batch].</param>
    /// <param name="nextPositions">Position of that token in each sequence, [batch, 1].</param>
    public CudaGraphDecoder(IStepRunner runner, Sampler sampler, Tensor first, Tensor nextPositions, int padId)
    {
        this.runner = runner;
        var cache = runner.Cache ?? throw new ArgumentException("CUDA graphs capture steps over an in-memory KV cache.");
        this.sampler = sampler;
        var device = first.device;
        ids = first.unsqueeze(1).clone().DetachFromDisposeScope();
        positions = nextPositions.clone().DetachFromDisposeScope();
        slot = torch.tensor(new long[] { cache.Length }).to(device).DetachFromDisposeScope();
        finished = torch.zeros(first.size(0), ScalarType.Bool, device).DetachFromDisposeScope();
        pad = torch.tensor((long)padId).to(device).DetachFromDisposeScope();
        ones = Enumerable.Repeat(1, (int)first.size(0)).ToArray();
        // A bound of every position the run reaches (the rotary tables are sized by it before the capture, which freezes them):
        // the sequence length, past the cache's capacity when a policy evicts.
        maxPosition = cache.MaxSequenceLength - 1;
        graph = new StepGraph(cache, slot, Body, capture: StepGraph.CanCapture(device));
    }

    /// <summary>How the steps so far ran (graph captures, replays, eager steps).</summary>
    public GraphSteps Counts => graph.Counts;

    /// <summary>Marks sequences whose further tokens are replaced by padding (they stopped).</summary>
    public void SetFinished(bool[] flags)
    {
        using var host = torch.tensor(flags);
        finished.copy_(host);
    }

    /// <summary>Runs one decode step; returns the new tokens, [batch] (a view of a buffer the next step overwrites).</summary>
    public Tensor Step()
    {
        graph.Run();
        return ids.squeeze(1);
    }

    /// <summary>One decode step with static shapes that leaves its outputs in its own inputs.</summary>
    void Body()
    {
        using var scope = torch.NewDisposeScope();
        var logits = runner.Forward(new ForwardBatch
        {
            InputIds = ids,
            Positions = positions,
            RealTokens = ones,
            MaxPosition = maxPosition,
            LastPositionOnly = true,
            WriteSlots = slot,
        });
        var next = torch.where(finished, pad, sampler.Next(logits));
        ids.copy_(next.unsqueeze(1));
        positions.add_(1);
        slot.add_(1);
    }

    public void Dispose()
    {
        graph.Dispose(); // before the buffers its kernels point into
        foreach (var t in new[] { ids, positions, slot, finished, pad }) t.Dispose();
    }
}
