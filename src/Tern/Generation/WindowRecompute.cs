using Tern.Caching;
using Tern.Models;
using static TorchSharp.torch;

namespace Tern.Generation;

/// <summary>StreamingLLM's "sliding window with re-computation" baseline as a way of stepping (Xiao et al. 2024, Fig. 1b):
/// every token is predicted from the last W tokens only, re-encoded from scratch, O(T·W²) in all. Once a sequence outgrows
/// the window, instead of appending a step, the runner's state is cleared and the last W tokens of every sequence are run
/// again as a fresh left-padded prompt, positions from 0. The cache it runs over never evicts.</summary>
internal sealed class WindowRecompute
{
    readonly int window;

    WindowRecompute(int window) => this.window = window;

    /// <summary>The baseline for sequences of at most <paramref name="maxSequenceLength"/> tokens with
    /// <paramref name="window"/> (a count, or a ratio of that length; refused when it leaves no token); null without a
    /// window or when it holds every sequence whole (steps then append as usual).</summary>
    public static WindowRecompute? For(KvBudget? window, int maxSequenceLength)
    {
        if (window is not { } budget) return null;
        int tokens = KvCachePolicies.Resolve(budget, maxSequenceLength, 1, "window-recompute");
        return tokens < maxSequenceLength ? new WindowRecompute(tokens) : null;
    }

    /// <summary>True when the step that makes the longest sequence <paramref name="sequenceLength"/> tokens long re-runs the
    /// window instead of appending.</summary>
    public bool Applies(int sequenceLength) => sequenceLength > window;

    /// <summary>Re-runs the last window of <paramref name="tokens"/> (every token each sequence has fed) through the cleared
    /// <paramref name="runner"/>; returns the last position's logits [batch, vocab].</summary>
    public Tensor Run(IStepRunner runner, Device device, IReadOnlyList<IReadOnlyList<int>> tokens)
    {
        runner.Clear();
        var windows = tokens.Select(f => (IReadOnlyList<int>)f.Skip(Math.Max(0, f.Count - window)).ToArray()).ToArray();
        return runner.Forward(ForwardBatch.LeftPadded(windows, device, lastPositionOnly: true));
    }
}
