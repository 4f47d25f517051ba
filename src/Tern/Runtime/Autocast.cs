using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Runtime;

/// <summary>
/// Mixed precision in the manner of <c>torch.autocast</c> (which TorchSharp lacks): inside a scope, matrix products (linear
/// layers, the LM head, attention) run in a 16-bit type while weights, embeddings, norms, softmax, residual sums and the loss
/// stay in fp32. Weights are cast per use, so the optimizer keeps fp32 master weights and fp32 state.
/// </summary>
public static class Autocast
{
    [ThreadStatic] static ScalarType? current;

    /// <summary>The type matrix products run in on this thread; null outside a scope.</summary>
    public static ScalarType? Current => current;

    /// <summary>Opens a scope on this thread (scopes nest); dispose it to restore the previous setting.</summary>
    public static IDisposable Enter(ScalarType type)
    {
        if (type is not (ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"autocast runs in bf16 or fp16, not {type}.", nameof(type));
        var scope = new Scope(current);
        current = type;
        return scope;
    }

    /// <summary><paramref name="x"/> in the scope's type when it is a floating tensor of another type; else itself.</summary>
    internal static Tensor Cast(Tensor x) => current is { } t && x.dtype != t && x.is_floating_point() ? x.to(t) : x;

    sealed class Scope(ScalarType? previous) : IDisposable
    {
        bool disposed;
        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            current = previous;
        }
    }
}
