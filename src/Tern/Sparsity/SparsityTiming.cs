using System.Diagnostics;
using Tern.Interop;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Sparsity;

/// <summary>What <see cref="SparsityTiming.Measure"/> found, per decoder layer and decode token (batch 1).</summary>
/// <param name="PredictorMs">The learned predictors of one layer (MLP and heads: two low-rank products and their top-k); NaN
/// without predictors.</param>
/// <param name="PredictorProductsMs">Their low-rank products alone (no top-k): the rest of <paramref name="PredictorMs"/> is the
/// selection. NaN without predictors.</param>
/// <param name="SparseMlpMs">The sparse MLP's two gather-GEMVs (selected rows of the up-projection with the activation, selected
/// columns of the down-projection with the residual); NaN for a dense MLP.</param>
/// <param name="SparseMlpBytes">Weight bytes those read: the selected neurons' rows and columns (biases left out).</param>
/// <param name="SparseUpMs">The first of the two (the up-projection's gather-GEMV with the activation) alone; the down-projection's
/// share is the rest of <paramref name="SparseMlpMs"/>. NaN for a dense MLP.</param>
/// <param name="DenseMlpMs">The same layer's dense MLP (up, activation, down) for comparison, its down-projection laid out as the
/// sparse level keeps it (transposed on CUDA under neuron sparsity: cuBLAS then reads it, not the one-row GEMV of a dense run).</param>
/// <param name="DenseMlpBytes">Weight bytes the dense MLP reads (biases left out).</param>
public sealed record SparsityTimes(double PredictorMs, double PredictorProductsMs, double SparseMlpMs, double SparseMlpBytes, double SparseUpMs, double DenseMlpMs, double DenseMlpBytes)
{
    /// <summary>Achieved bytes per second of the sparse MLP.</summary>
    public double SparseMlpBandwidth => SparseMlpBytes / (SparseMlpMs / 1e3);

    /// <summary>Achieved bytes per second of the dense MLP.</summary>
    public double DenseMlpBandwidth => DenseMlpBytes / (DenseMlpMs / 1e3);
}

/// <summary>
/// DejaVu's per-layer costs at a model's own weights, for <c>tern bench --sparsity-sweep</c>: the predictor overhead per layer
/// and the sparse gather-GEMV's achieved bandwidth (bytes actually read over time, to set against the card's weight-read floor).
/// Each pass runs every layer in turn with a fresh random selection per layer, so the weights come from memory, not from a cache
/// that held the previous repeat's rows; on CUDA one pass is captured as a graph and replayed, so host launch costs (which a
/// decode step's graph does not pay either) are left out.
/// </summary>
public static class SparsityTiming
{
    /// <summary>Times <paramref name="sparsity"/>'s parts on <paramref name="model"/> over <paramref name="repeats"/> passes of
    /// every layer, one token.</summary>
    public static SparsityTimes Measure(CausalLanguageModel model, DejaVuSparsity sparsity, int repeats = 20)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var device = model.Device;
        var dtype = model.DType.ToScalarType();
        int layers = model.Info.Layers, hidden = model.Info.HiddenSize;
        var x = (torch.randn(new long[] { 1, 1, hidden }, device: device) * 0.5).to(dtype);

        double predictor = double.NaN, products = double.NaN;
        if (sparsity.Predictors is { } predictors)
        {
            double Predictors(bool select) => Time(device, repeats, () =>
            {
                using var pass = torch.NewDisposeScope();
                foreach (var layer in predictors.Layers)
                {
                    if (layer.Mlp is { } mlp && sparsity.ActiveNeurons < mlp.Outputs)
                    {
                        var logits = mlp.Logits(x);
                        if (select) DejaVuSparsity.TopKAscending(logits, sparsity.ActiveNeurons);
                    }
                    if (sparsity.ActiveHeads < layer.Heads.Outputs)
                    {
                        var logits = layer.Heads.Logits(x);
                        if (select) DejaVuSparsity.TopKAscending(logits, sparsity.ActiveHeads);
                    }
                }
            }) / layers;
            predictor = Predictors(select: true);
            products = Predictors(select: false);
        }

        double sparseMs = double.NaN, sparseBytes = double.NaN, upMs = double.NaN, denseMs = double.NaN, denseBytes = double.NaN;
        var mlps = Enumerable.Range(0, layers).Select(model.SparseMlp).ToArray();
        if (mlps.All(m => m is not null) && layers > 0)
        {
            var (up0, down0, gated) = mlps[0]!.Value;
            long neurons = down0.Weight.size(1);
            int k = sparsity.ActiveNeurons;
            var act = Activations.Get(ModelIdentity.Of(model.Config).Activation, model.Config, "hidden_act");
            // One selection per layer, ascending like the predictors' top-k: drawn once, outside the timed passes.
            var selections = Enumerable.Range(0, layers)
                .Select(_ => torch.randperm(neurons, ScalarType.Int64).narrow(0, 0, k).sort().Values.view(1, 1, k).to(device)).ToArray();
            long element = down0.Weight.ElementSize;
            // Layer l's up-projection over its selected neurons, with the activation (gated: gate and up rows).
            Tensor SparseUp(int l)
            {
                var up = mlps[l]!.Value.Up;
                return gated ? up.ForwardGatedRows(x, selections[l], act, neurons) : up.ForwardRows(x, selections[l], act);
            }
            if (k < neurons)
            {
                sparseMs = Time(device, repeats, () =>
                {
                    using var pass = torch.NewDisposeScope();
                    for (int l = 0; l < layers; l++) mlps[l]!.Value.Down.ForwardColumnsAdd(SparseUp(l), selections[l], x);
                }) / layers;
                upMs = Time(device, repeats, () =>
                {
                    using var pass = torch.NewDisposeScope();
                    for (int l = 0; l < layers; l++) SparseUp(l);
                }) / layers;
                sparseBytes = (gated ? 3 : 2) * (double)k * hidden * element;
            }
            denseMs = Time(device, repeats, () =>
            {
                using var pass = torch.NewDisposeScope();
                for (int l = 0; l < layers; l++)
                {
                    var (up, down, _) = mlps[l]!.Value;
                    var y = up.Forward(x);
                    down.ForwardAdd(gated ? act.Gated(y, (int)neurons) : act.Apply(y), x);
                }
            }) / layers;
            denseBytes = (up0.Weight.NumberOfElements + down0.Weight.NumberOfElements) * (double)element;
        }
        return new SparsityTimes(predictor, products, sparseMs, sparseBytes, upMs, denseMs, denseBytes);
    }

    /// <summary>Milliseconds of one run of <paramref name="pass"/>: replayed as a CUDA graph where graphs can be captured, else run
    /// eagerly; after a warm-up either way.</summary>
    static double Time(Device device, int repeats, Action pass)
    {
        pass();
        DeviceReport.Synchronize(device);
        LibTorchCuda.Graph? graph = null;
        try
        {
            if (device.type == DeviceType.CUDA && LibTorchCuda.IsAvailable)
            {
                var stream = LibTorchCuda.StreamFromPool();
                LibTorchCuda.SetCurrentStream(stream);
                try
                {
                    pass(); // warm-up on the capture stream (cuBLAS workspaces), as StepGraph does
                    torch.cuda.synchronize();
                    graph = new LibTorchCuda.Graph();
                    graph.CaptureBegin();
                    pass();
                    graph.CaptureEnd();
                }
                finally
                {
                    LibTorchCuda.SetCurrentStream(LibTorchCuda.DefaultStream());
                }
                torch.cuda.synchronize();
            }
            var watch = Stopwatch.StartNew();
            for (int i = 0; i < repeats; i++)
                if (graph is not null) graph.Replay();
                else pass();
            DeviceReport.Synchronize(device);
            return watch.Elapsed.TotalMilliseconds / repeats;
        }
        finally
        {
            graph?.Dispose();
        }
    }
}
