using Tern.Caching;
using Tern.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Generation;

/// <summary>
/// A static-shape decode step (writes at a slot held on the device, attention over the whole preallocated cache with a mask)
/// run as a CUDA graph: a TorchSharp step is hundreds of small launches whose host cost exceeds the GPU time at small
/// batches; captured once, it launches as one. The first run warms up on the capture stream (cuBLAS handles, workspaces) and
/// captures the step after it; later runs replay. Without a graph (the CPU, where tests prove the body) the body runs as it
/// is. A step after which the cache's policy compacts, and the step after anything moved entries while keys are rotated at
/// their cache index (the main graph rotates the step's own keys only), leave other bookkeeping than one more entry at the
/// slot: they run eagerly, and every layer then continues from one slot (an eviction in place, H2O's steady state, is part of
/// the main graph). When such a step recurs in the same state — a sink cache evicts at the same length every EvictEvery
/// steps, and the step after re-rotates the same slots — and its policy evicts without reading back from the device, it is
/// captured the second time (the first warmed it up) into a graph of its own, replayed from then on with the bookkeeping the
/// captured step left. Capture is thread-local, but keep one graph user per GPU: other threads' work on the device during a
/// capture is not part of any contract here.
/// </summary>
internal sealed class StepGraph : IDisposable
{
    readonly (KvCache Cache, Tensor Slot)[] caches;
    readonly Action body;
    readonly bool capture;
    LibTorchCuda.Graph? graph;
    bool[] graphFillsFreeSlots = [];

    /// <summary>Graphs of steps captured for one host state (evictions, re-rotations), and what each leaves: every layer's
    /// bookkeeping and the tokens each row advanced.</summary>
    readonly Dictionary<string, (LibTorchCuda.Graph Graph, (int, bool, bool)[][] Bookkeeping, int[][] Advanced)> stateGraphs = new();
    readonly HashSet<string> statesSeen = new();
    const int MaxStateGraphs = 8; // each holds a private memory pool

    /// <summary>A step over one cache whose body writes at <paramref name="slot"/> and advances it.</summary>
    public StepGraph(KvCache cache, Tensor slot, Action body, bool capture) : this(new[] { (cache, slot) }, body, capture) { }

    /// <summary>A step over several caches (serving pools stepped in one forward pass), each written at its own slot, which the
    /// body advances.</summary>
    public StepGraph(IReadOnlyList<(KvCache Cache, Tensor Slot)> caches, Action body, bool capture) =>
        (this.caches, this.body, this.capture) = (caches.ToArray(), body, capture);

    /// <summary>Runs one step: the body writes at each cache's slot and advances it.</summary>
    public void Run()
    {
        bool evicts = caches.Any(c => EvictsAfterNextStep(c.Cache));
        // Entries moved (an eviction, a join) while keys sit at their cache index: the main graph would rotate only its own.
        bool stale = capture && graph is not null && caches.Any(c => c.Cache.AttendedKeysStale);
        if (evicts || stale)
        {
            if (capture && (!evicts || caches.All(c => c.Cache.Policy.EvictsWithoutReadBack)) && RunForState(evicts)) return;
            EagerSteps++;
            body();
            if (evicts) AfterEviction();
        }
        else if (!capture)
        {
            EagerSteps++;
            body();
        }
        else if (graph is null || !graphFillsFreeSlots.SequenceEqual(caches.Select(c => FillsFreeSlotsNextStep(c.Cache))))
        {
            // First capture, or a cache changed how steps write (appending at its slot, or into the slots an in-place eviction
            // freed): capture that step instead.
            graph?.Dispose();
            graph = null;
            graphFillsFreeSlots = caches.Select(c => FillsFreeSlotsNextStep(c.Cache)).ToArray();
            torch.cuda.synchronize();
            var captureStream = LibTorchCuda.StreamFromPool();
            LibTorchCuda.SetCurrentStream(captureStream);
            try
            {
                EagerSteps++; // the warm-up step runs for real
                body();
                torch.cuda.synchronize();
                if (!caches.Any(c => EvictsAfterNextStep(c.Cache))) // else a later step is captured
                {
                    graph = new LibTorchCuda.Graph();
                    Captures++;
                    graph.CaptureBegin();
                    body();
                    graph.CaptureEnd();
                    foreach (var c in caches) c.Cache.AdjustForReplay(-1); // the captured step was recorded on the host but has not run
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
            graph.Replay();
            Replays++;
            foreach (var c in caches) c.Cache.AdjustForReplay(1);
        }
    }

    /// <summary>After a step that evicted: every layer continues from one slot, the device-held one.</summary>
    void AfterEviction()
    {
        foreach (var (cache, slot) in caches)
        {
            cache.AlignLengths();
            slot.fill_(cache.Length);
        }
    }

    /// <summary>Runs a step of the caches' current host state through the graph captured for it, capturing it when the state
    /// is met a second time; false when it runs eagerly.</summary>
    bool RunForState(bool evicts)
    {
        string key = string.Join('|', caches.Select(c => string.Join(';', c.Cache.Bookkeeping)));
        if (stateGraphs.TryGetValue(key, out var known))
        {
            known.Graph.Replay();
            Replays++;
            for (int i = 0; i < caches.Length; i++)
            {
                caches[i].Cache.Bookkeeping = known.Bookkeeping[i];
                caches[i].Cache.Advance(known.Advanced[i]);
            }
            return true;
        }
        if (statesSeen.Add(key) || stateGraphs.Count >= MaxStateGraphs) return false;
        var lengths = caches.Select(c => c.Cache.SequenceLengths.ToArray()).ToArray();
        torch.cuda.synchronize();
        LibTorchCuda.SetCurrentStream(LibTorchCuda.StreamFromPool());
        var captured = new LibTorchCuda.Graph();
        try
        {
            captured.CaptureBegin();
            body();
            if (evicts) AfterEviction();
            captured.CaptureEnd();
        }
        catch
        {
            captured.Dispose();
            throw;
        }
        finally
        {
            LibTorchCuda.SetCurrentStream(LibTorchCuda.DefaultStream());
        }
        Captures++;
        // The host's bookkeeping is now what the captured step leaves; the device runs it by replaying.
        var advanced = caches.Select((c, i) => c.Cache.SequenceLengths.Select((n, b) => n - lengths[i][b]).ToArray()).ToArray();
        stateGraphs[key] = (captured, caches.Select(c => c.Cache.Bookkeeping).ToArray(), advanced);
        torch.cuda.synchronize();
        captured.Replay();
        Replays++;
        return true;
    }

    /// <summary>Graphs captured so far (the first step, each change of how the caches write, each recurring eviction state).</summary>
    public int Captures { get; private set; }

    /// <summary>Steps run as a graph replay (the main graph's or an eviction state's).</summary>
    public int Replays { get; private set; }

    /// <summary>Steps whose body ran outside any graph: every step where nothing is captured (the CPU), a capture's warm-up, and
    /// eviction or re-rotation steps of a state not captured (yet).</summary>
    public int EagerSteps { get; private set; }

    /// <summary>The counts so far, as a generation reports them.</summary>
    public GraphSteps Counts => new(Captures, Replays, EagerSteps);

    /// <summary>True when the next one-token step over <paramref name="cache"/> writes into free slots (an evicting policy's
    /// steady state, or a serving pool's slot per row: <see cref="LayerKvCache.FillsFreeSlots"/>) rather than at the
    /// device-held slot.</summary>
    static bool FillsFreeSlotsNextStep(KvCache cache) => cache.LayerCount > 0 && cache[0].FillsFreeSlots(1);

    /// <summary>True when the next one-token step over <paramref name="cache"/> ends in an eviction in some layer (it then runs
    /// eagerly, outside any graph).</summary>
    public static bool EvictsAfterNextStep(KvCache cache)
    {
        for (int l = 0; l < cache.LayerCount; l++)
            if (cache.Policy.EvictsAfter(cache[l], 1)) return true;
        return false;
    }

    /// <summary>True when static-shape steps on <paramref name="device"/> can be captured as graphs.</summary>
    public static bool CanCapture(Device device) => device.type == DeviceType.CUDA && LibTorchCuda.IsAvailable;

    /// <summary>True when static-shape steps serve <paramref name="cache"/>: its entries are 16-bit (only the 16-bit store
    /// writes at a device-held slot, <see cref="LayerKvCache.Append"/>).</summary>
    public static bool Serves(KvCache cache) => cache.Options.Bits == 16;

    public void Dispose()
    {
        // Before the buffers their kernels point into.
        graph?.Dispose();
        foreach (var state in stateGraphs.Values) state.Graph.Dispose();
        stateGraphs.Clear();
    }
}
