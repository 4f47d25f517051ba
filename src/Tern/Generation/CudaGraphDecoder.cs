using Tern.Interop;
using Tern.Caching;
using Tern.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Generation;

/// <summary>
/// Runs decode steps as one CUDA-graph replay each. A TorchSharp decode step is hundreds of small launches whose host cost
/// (~6 µs each) exceeds the GPU time at small batches; captured once, the whole step — forward pass, arg-max, and the
/// update of its own inputs — launches as a single graph. Shapes are static: the step writes its keys/values at a slot held
/// on the device and attends over the whole preallocated cache with a mask. The first step runs eagerly on the capture
/// stream (warming cuBLAS and the allocator), the second is captured, and every later one replays. Capture is thread-local,
/// but keep one generation loop per GPU: other threads' work on the device during a capture is not part of any contract here.
/// </summary>
internal sealed class CudaGraphDecoder : IDisposable
{
    readonly IStepRunner runner;
    readonly KvCache cache;
    readonly Device device;
    readonly Sampler sampler;
    readonly Tensor ids, positions, slot, finished, pad;
    readonly int[] ones;
    readonly int maxPosition;
    LibTorchCuda.Graph? graph;
    int steps;

    /// <summary>True when graphs can serve this request: CUDA, libtorch's graph symbols found, an in-memory 16-bit cache (any
    /// policy that evicts in place: its eviction steps run eagerly) and a deterministic sampler.</summary>
    public static bool CanServe(IStepRunner runner, Device device, GenerationOptions options) =>
        runner.Cache is { } cache && options.Temperature == 0 && runner.Policy.Bits == 16
        && runner.Policy.RecomputeWindow(cache.MaxSequenceLength, cache.MaxSequenceLength) == 0
        && (options.ForceStaticShapes || options.UseCudaGraphs && device.type == DeviceType.CUDA && LibTorchCuda.IsAvailable);

    bool Capturing => device.type == DeviceType.CUDA;

    /// <param name="first">The token sampled from the prefill, [batch].</param>
    /// <param name="nextPositions">Position of that token in each sequence, [batch, 1].</param>
    public CudaGraphDecoder(IStepRunner runner, Sampler sampler, Tensor first, Tensor nextPositions, int padId)
    {
        this.runner = runner;
        cache = runner.Cache ?? throw new ArgumentException("CUDA graphs capture steps over an in-memory KV cache.");
        this.sampler = sampler;
        device = first.device;
        ids = first.unsqueeze(1).clone().DetachFromDisposeScope();
        positions = nextPositions.clone().DetachFromDisposeScope();
        slot = torch.tensor(new long[] { cache[0].Length }).to(device).DetachFromDisposeScope();
        finished = torch.zeros(first.shape[0], ScalarType.Bool, device).DetachFromDisposeScope();
        pad = torch.tensor((long)padId).to(device).DetachFromDisposeScope();
        ones = Enumerable.Repeat(1, (int)first.shape[0]).ToArray();
        // A bound of every position the run reaches (the rotary tables are sized by it before the capture, which freezes them):
        // the sequence length, past the cache's capacity when a policy evicts.
        maxPosition = cache.MaxSequenceLength - 1;
    }

    /// <summary>Marks sequences whose further tokens are replaced by padding (they stopped).</summary>
    public void SetFinished(bool[] flags)
    {
        using var host = torch.tensor(flags);
        finished.copy_(host);
    }

    /// <summary>Runs one decode step; returns the new tokens, [batch] (a view of a buffer the next step overwrites).</summary>
    public Tensor Step()
    {
        if (Evicts())
        {
            // The policy evicts after this step: it runs eagerly (compaction is host-driven), then every layer continues from
            // one slot again.
            Body();
            cache.AlignLengths();
            slot.fill_(cache[0].Length);
        }
        else if (!Capturing)
            Body(); // static shapes without a graph: how the CPU tests prove the captured body right
        else if (graph is null)
        {
            // Warm up on the stream the capture will use, so cuBLAS handles and workspaces exist before capturing; capture the
            // next step unless it evicts (then a later one).
            torch.cuda.synchronize();
            var captureStream = LibTorchCuda.StreamFromPool();
            LibTorchCuda.SetCurrentStream(captureStream);
            try
            {
                Body();
                torch.cuda.synchronize();
                if (!Evicts())
                {
                    graph = new LibTorchCuda.Graph();
                    graph.CaptureBegin();
                    Body();
                    graph.CaptureEnd();
                    cache.AdjustForReplay(-1); // the captured step was recorded on the host but has not run
                }
            }
            finally
            {
                LibTorchCuda.SetCurrentStream(LibTorchCuda.DefaultStream());
            }
            torch.cuda.synchronize();
        }
        else
        {
            graph!.Replay();
            cache.AdjustForReplay(1);
        }
        steps++;
        return ids.squeeze(1);
    }

    /// <summary>True when the next one-token step ends in an eviction in some layer.</summary>
    bool Evicts()
    {
        for (int l = 0; l < cache.LayerCount; l++)
            if (cache.Policy.EvictsAfter(cache[l], 1)) return true;
        return false;
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
        graph?.Dispose(); // before the buffers its kernels point into
        foreach (var t in new[] { ids, positions, slot, finished, pad }) t.Dispose();
    }
}
