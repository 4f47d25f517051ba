using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Models;

/// <summary>A linear map y = x·Wᵀ + b with W stored [out, in] as in transformers.</summary>
internal sealed record Linear(Tensor Weight, Tensor? Bias) : IDisposable
{
    public Tensor Forward(Tensor x) => F.linear(x, Weight, Bias);
    public long OutFeatures => Weight.shape[0];
    public void Dispose()
    {
        Weight.Dispose();
        Bias?.Dispose();
    }
}

/// <summary>Normalisation layers as transformers computes them.</summary>
internal static class Norms
{
    /// <summary>RMSNorm (Zhang &amp; Sennrich): w · x / sqrt(mean(x²) + ε), statistics in fp32 as in transformers' Llama.</summary>
    public static Tensor Rms(Tensor x, Tensor weight, double eps)
    {
        if (x.dtype == ScalarType.Float32)
            return x * (x.square().mean(new long[] { -1 }, keepdim: true) + eps).rsqrt() * weight;
        var xf = x.to(ScalarType.Float32);
        var normed = (xf * (xf.square().mean(new long[] { -1 }, keepdim: true) + eps).rsqrt()).to(x.dtype);
        return normed * weight;
    }

    /// <summary>LayerNorm over the last dimension.</summary>
    public static Tensor Layer(Tensor x, Tensor weight, Tensor? bias, double eps) =>
        F.layer_norm(x, new[] { x.shape[^1] }, weight, bias, eps);
}

/// <summary>The <c>hidden_act</c> / <c>activation_function</c> values transformers knows for these architectures.</summary>
internal static class Activations
{
    public static Func<Tensor, Tensor> Get(string name, Checkpoints.HfConfig config, string field) => name.ToLowerInvariant() switch
    {
        "relu" => x => F.relu(x),
        "silu" or "swish" => x => F.silu(x),
        "gelu" => x => F.gelu(x),
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => x => F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh),
        "quick_gelu" => x => x * F.sigmoid(x * 1.702),
        _ => throw config.Error(field, $"is '{name}', which Tern does not support (supported: relu, silu, gelu, gelu_new, gelu_pytorch_tanh, quick_gelu)"),
    };
}
