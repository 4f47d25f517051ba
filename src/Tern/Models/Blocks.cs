using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Models;

/// <summary>A linear map y = x·Wᵀ + b with W stored [out, in] as in transformers.</summary>
internal sealed record Linear(Tensor Weight, Tensor? Bias) : IDisposable
{
    /// <summary>Sees every input of <see cref="Forward"/> and <see cref="ForwardAdd"/> (calibration of GPTQ / SparseGPT).</summary>
    public Action<Tensor>? InputObserver { get; init; }

    public Tensor Forward(Tensor x)
    {
        InputObserver?.Invoke(x);
        return TryFused(x, Weight, Bias, null, out var y) ? y : Apply(x, Weight, Bias);
    }

    /// <summary>residual + x·Wᵀ + b, in one kernel where the one-row GEMV serves.</summary>
    public Tensor ForwardAdd(Tensor x, Tensor residual)
    {
        InputObserver?.Invoke(x);
        return TryFused(x, Weight, Bias, residual, out var y) ? y : residual + Apply(x, Weight, Bias);
    }

    /// <summary>The models' heads: x·Wᵀ + b, on the CPU through the fused bf16 GEMV where it serves, else <see cref="Apply"/>.
    /// CUDA keeps cuBLAS here: the one-row GEMV kernel is not yet measured on vocabulary-sized weights.</summary>
    public static Tensor Project(Tensor x, Tensor weight, Tensor? bias = null) =>
        x.device_type == DeviceType.CPU && TryFused(x, weight, bias, null, out var y) ? y : Apply(x, weight, bias);

    /// <summary>The fused GEMV kernels, only where <see cref="Apply"/> would multiply in x's own type: inside an autocast scope
    /// of another type the product is cast first, which the kernels do not do.</summary>
    static bool TryFused(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, out Tensor y)
    {
        y = null!;
        return (Runtime.Autocast.Current is not { } cast || cast == x.dtype) && Interop.FusedKernels.TryGemv(x, weight, bias, residual, out y);
    }

    /// <summary>x·Wᵀ + b, in the <see cref="Runtime.Autocast"/> type inside an autocast scope (the output keeps that type;
    /// a residual sum with an fp32 stream promotes back to fp32).</summary>
    public static Tensor Apply(Tensor x, Tensor weight, Tensor? bias = null) => Runtime.Autocast.Current is null
        ? F.linear(x, weight, bias)
        : F.linear(Runtime.Autocast.Cast(x), Runtime.Autocast.Cast(weight), bias is null ? null : Runtime.Autocast.Cast(bias));

    /// <summary>Only the outputs <paramref name="rows"/> (int64 [B, T, k], per token) of x [B, T, in]: [B, T, k], reading just
    /// those rows of W (DejaVu's sparse up-projection, and the query rows of kept heads), through the fused gather-GEMV on CUDA.</summary>
    public Tensor ForwardRows(Tensor x, Tensor rows) =>
        Interop.FusedKernels.TryGatherRows(x, Weight, Bias, rows, -1, 0, out var y) ? y : GatheredRows(x, rows);

    /// <summary><paramref name="act"/> of <see cref="ForwardRows(Tensor, Tensor)"/> (an MLP's up-projection over its selected neurons), the
    /// activation fused into the gather-GEMV on CUDA.</summary>
    public Tensor ForwardRows(Tensor x, Tensor rows, Activation act) =>
        act.Kind >= 0 && Interop.FusedKernels.TryGatherRows(x, Weight, Bias, rows, act.Kind, 0, out var y) ? y : act.Apply(GatheredRows(x, rows));

    /// <summary>act(gate)·up of a gated MLP's selected <paramref name="neurons"/> (int64 [B, T, k]) for W = [gate | up] stacked, the
    /// up-projection of neuron n being row n + <paramref name="up"/>: [B, T, k], reading only those rows.</summary>
    public Tensor ForwardGatedRows(Tensor x, Tensor neurons, Activation act, long up) =>
        act.Kind >= 0 && Interop.FusedKernels.TryGatherRows(x, Weight, Bias, neurons, act.Kind, up, out var y) ? y
            : act.Gated(GatheredRows(x, torch.cat(new[] { neurons, neurons + up }, -1)), (int)neurons.size(-1));

    // The index-op path (CPU, and the fallback): each token's rows gathered into its own [k, in] matrix.
    Tensor GatheredRows(Tensor x, Tensor rows)
    {
        long n = rows.size(0) * rows.size(1), k = rows.size(2);
        var y = x.reshape(n, 1, -1).matmul(Weight.index_select(0, rows.flatten()).view(n, k, -1).transpose(1, 2));
        if (Bias is not null) y = y + Bias.index_select(0, rows.flatten()).view(n, 1, k);
        return y.view_as(rows);
    }

    /// <summary>residual + a·W[:, columns]ᵀ + b: <paramref name="a"/> [B, T, k] holds the values of the inputs
    /// <paramref name="columns"/> (int64 [B, T, k], per token), the others being zero (DejaVu's sparse down-projection, and its
    /// output projection over the kept heads, whose columns come in aligned runs of <paramref name="run"/> = head_dim). Through the
    /// fused gather-GEMV on CUDA when W is <see cref="Interop.FusedKernels.StoredTransposed"/> or the columns come in runs.</summary>
    public Tensor ForwardColumnsAdd(Tensor a, Tensor columns, Tensor residual, int run = 1)
    {
        if (Interop.FusedKernels.TryGatherColumnsAdd(a, Weight, Bias, columns, residual, run, out var fused)) return fused;
        long n = columns.size(0) * columns.size(1), k = columns.size(2);
        var y = a.reshape(n, 1, k).matmul(Weight.index_select(1, columns.flatten()).view(-1, n, k).permute(1, 2, 0));
        return residual + (Bias is null ? y : y + Bias).view_as(residual);
    }

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
        if (Interop.FusedKernels.TryRmsNorm(x, weight, eps, out var fused)) return fused;
        if (x.dtype == ScalarType.Float32)
            return x * (x.square().mean(new long[] { -1 }, keepdim: true) + eps).rsqrt() * weight;
        var xf = x.to(ScalarType.Float32);
        var normed = (xf * (xf.square().mean(new long[] { -1 }, keepdim: true) + eps).rsqrt()).to(x.dtype);
        return normed * weight;
    }

    /// <summary>LayerNorm over the last dimension.</summary>
    public static Tensor Layer(Tensor x, Tensor weight, Tensor? bias, double eps) =>
        Interop.FusedKernels.TryLayerNorm(x, weight, bias, eps, out var y) ? y : F.layer_norm(x, new[] { x.size(-1) }, weight, bias, eps);
}

/// <summary>An activation function as configured by <c>hidden_act</c> / <c>activation_function</c>.</summary>
/// <param name="Kind">Index of the fused kernel's variant: 0 silu, 1 relu, 2 gelu, 3 gelu (tanh), -1 none.</param>
internal sealed record Activation(string Name, int Kind, Func<Tensor, Tensor> Apply)
{
    /// <summary>act(gate) · up for [gate | up] = <paramref name="gateUp"/>[..., 0:2n] (the gated MLP of Llama-style models).</summary>
    public Tensor Gated(Tensor gateUp, int n) =>
        Kind >= 0 && Interop.FusedKernels.TryGated(gateUp, n, Kind, out var fused) ? fused
            : Apply(gateUp.narrow(-1, 0, n)) * gateUp.narrow(-1, n, n);
}

/// <summary>The <c>hidden_act</c> / <c>activation_function</c> values transformers knows for these architectures.</summary>
internal static class Activations
{
    public static Activation Get(string name, Checkpoints.HfConfig config, string field) => name.ToLowerInvariant() switch
    {
        "relu" => new(name, 1, x => F.relu(x)),
        "silu" or "swish" => new(name, 0, x => F.silu(x)),
        "gelu" => new(name, 2, x => F.gelu(x)),
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => new(name, 3, x => F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh)),
        "quick_gelu" => new(name, -1, x => x * F.sigmoid(x * 1.702)),
        _ => throw config.Error(field, $"is '{name}', which Tern does not support (supported: relu, silu, gelu, gelu_new, gelu_pytorch_tanh, quick_gelu)"),
    };
}
