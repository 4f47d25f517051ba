using Tern.Models;
using static TorchSharp.torch;

namespace Tern.Generation;

/// <summary>StreamingLLM's "sliding window with re-computation" baseline as a way of stepping (Xiao et al. 2024, Fig. 1b):
/// instead of appending a step, the runner's state is cleared and the last W tokens of every sequence are run again as a
/// fresh left-padded prompt, positions from 0.</summary>
internal static class WindowRecompute
{
    /// <summary>Re-runs the last <paramref name="window"/> of <paramref name="tokens"/> (every token each sequence has fed)
    /// through the cleared <paramref name="runner"/>; returns the last position's logits [batch, vocab].</summary>
    public static Tensor Run(IStepRunner runner, Device device, IReadOnlyList<IReadOnlyList<int>> tokens, int window)
    {
        runner.Clear();
        var windows = tokens.Select(f => (IReadOnlyList<int>)f.Skip(Math.Max(0, f.Count - window)).ToArray()).ToArray();
        return runner.Forward(ForwardBatch.LeftPadded(windows, device, lastPositionOnly: true));
    }
}
