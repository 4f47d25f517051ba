using static TorchSharp.torch;

namespace Tern.Tests;

/// <summary>Checks on tensors that both test projects share.</summary>
internal static class TensorChecks
{
    /// <summary>Whether <paramref name="a"/> and <paramref name="b"/> have one shape and equal elements, bit for bit (a NaN
    /// equals nothing).</summary>
    public static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();
}
