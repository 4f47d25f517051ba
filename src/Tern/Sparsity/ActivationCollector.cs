using Tern.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Sparsity;

/// <summary>How <see cref="ActivationCollector"/> reads a corpus.</summary>
public sealed record CollectOptions
{
    /// <summary>Token positions recorded per layer: the first this many tokens of the corpus (bounds time and file sizes).</summary>
    public int MaxTokens { get; init; } = 8192;
    /// <summary>Tokens per forward window (capped by the model's positions); the corpus is cut into windows of this length.</summary>
    public int SequenceLength { get; init; } = 256;
    /// <summary>Windows per forward pass.</summary>
    public int BatchSize { get; init; } = 4;
    /// <summary>Record MLP firing masks (needs a ReLU MLP, see <see cref="ModelIdentity.RequireReluMlp"/>); false: heads only.</summary>
    public bool Mlp { get; init; } = true;
}

/// <summary>One layer of one forward pass, as <see cref="ActivationCollector.Record"/> sees it.</summary>
/// <param name="Input">The residual stream entering the layer, [B,T,hidden], model dtype.</param>
/// <param name="HeadOutputs">Each head's attention output before the output projection, [B,T,H,D] fp32.</param>
/// <param name="MlpActive">Bool [B,T,intermediate], or null without MLP collection.</param>
/// <param name="MlpInput">The residual stream entering the MLP block, [B,T,hidden], model dtype; null without MLP collection.</param>
internal sealed record LayerCapture(Tensor Input, Tensor HeadOutputs, Tensor? MlpActive, Tensor? MlpInput) : IDisposable
{
    public void Dispose()
    {
        Input.Dispose();
        HeadOutputs.Dispose();
        MlpActive?.Dispose();
        MlpInput?.Dispose();
    }
}

/// <summary>What <see cref="ActivationCollector.Record"/> recorded: per layer, and the logits [B,T,vocab]; owns its tensors.</summary>
internal sealed record CapturedPass(IReadOnlyList<LayerCapture> Layers, Tensor Logits) : IDisposable
{
    public void Dispose()
    {
        foreach (var l in Layers) l.Dispose();
        Logits.Dispose();
    }
}

/// <summary>
/// DejaVu's data collection (Liu et al. 2023, §4 and the released scripts): run the dense model over a corpus and record, per
/// layer, its input (the residual stream before the norm: what the predictors read), the MLP block's input (the residual
/// after attention: what the released MLP predictors read), which MLP neurons fire (label: post-ReLU &gt; 0) and each head's
/// output norm (label: the top heads by ‖o_h‖). The model's own forward pass hands all of them to DejaVu's seam (<see cref="IContextualSparsity"/>), which a recording step keeps: no layer maths is repeated here.
/// </summary>
public static class ActivationCollector
{
    /// <summary>Runs <paramref name="model"/> over <paramref name="tokens"/> (a token stream cut into equal windows, no padding).</summary>
    public static ActivationData Collect(CausalLanguageModel model, IReadOnlyList<int> tokens, CollectOptions options,
        IProgress<double>? progress = null, CancellationToken cancellation = default)
    {
        if (options.MaxTokens < 1 || options.BatchSize < 1 || options.SequenceLength < 1)
            throw new ArgumentException($"max tokens ({options.MaxTokens}), batch size ({options.BatchSize}) and sequence length ({options.SequenceLength}) must be positive.");
        var identity = ModelIdentity.Of(model.Config);
        if (options.Mlp) identity.RequireReluMlp();
        int t = Math.Min(options.SequenceLength, model.Info.MaxPositions);
        int windows = Math.Min(tokens.Count / t, (options.MaxTokens + t - 1) / t);
        if (windows == 0)
            throw new ArgumentException($"the corpus has {tokens.Count} tokens, fewer than one window of {t}; give more text or a smaller sequence length.");
        int wanted = Math.Min(options.MaxTokens, windows * t);
        int layers = model.Info.Layers;
        var inputs = new List<Tensor>[layers];
        var active = new List<Tensor>[layers];
        var norms = new List<Tensor>[layers];
        var mlpInputs = new List<Tensor>[layers];
        for (int i = 0; i < layers; i++) (inputs[i], active[i], norms[i], mlpInputs[i]) = (new(), new(), new(), new());
        try
        {
            int kept = 0;
            for (int w = 0; w < windows; w += options.BatchSize)
            {
                cancellation.ThrowIfCancellationRequested();
                int b = Math.Min(options.BatchSize, windows - w);
                int keep = Math.Min(b * t, wanted - kept); // the last batch may be cut to MaxTokens
                using var scope = torch.NewDisposeScope();
                var ids = torch.tensor(Enumerable.Range(w * t, b * t).Select(i => (long)tokens[i]).ToArray(), new long[] { b, t });
                using var pass = Record(model, ids, options.Mlp);
                for (int i = 0; i < layers; i++)
                {
                    var c = pass.Layers[i];
                    inputs[i].Add(Rows(c.Input, keep).to(ScalarType.BFloat16, torch.CPU).DetachFromDisposeScope());
                    // ‖o_h‖ per token and head: [B,T,H,D] → [B·T, H].
                    norms[i].Add(Rows(c.HeadOutputs.norm(-1), keep).cpu().DetachFromDisposeScope());
                    if (c.MlpActive is { } a) active[i].Add(Rows(a, keep).cpu().DetachFromDisposeScope());
                    if (c.MlpInput is { } m) mlpInputs[i].Add(Rows(m, keep).to(ScalarType.BFloat16, torch.CPU).DetachFromDisposeScope());
                }
                kept += keep;
                progress?.Report((double)kept / wanted);
            }
            var data = new LayerActivations[layers];
            for (int i = 0; i < layers; i++)
                data[i] = new LayerActivations(Cat(inputs[i]), options.Mlp ? Cat(active[i]) : null, Cat(norms[i]), options.Mlp ? Cat(mlpInputs[i]) : null);
            return new ActivationData(new ActivationManifest { Model = identity, Tokens = kept, SequenceLength = t, Mlp = options.Mlp }, data);
        }
        finally
        {
            foreach (var list in inputs.Concat(active).Concat(norms).Concat(mlpInputs))
                foreach (var x in list) x.Dispose();
        }
    }

    /// <summary>
    /// One dense forward pass over <paramref name="ids"/> [B,T] (positions 0..T-1) through <see cref="CausalLanguageModel.Forward(ForwardBatch, Caching.KvCache)"/>,
    /// recorded through DejaVu's seam (<see cref="Recorder"/>): every layer's input, head outputs and (with <paramref name="mlp"/>)
    /// MLP firing mask, and the logits of every position. The result owns its tensors.
    /// </summary>
    internal static CapturedPass Record(CausalLanguageModel model, Tensor ids, bool mlp)
    {
        if (mlp) ModelIdentity.Of(model.Config).RequireReluMlp();
        int b = (int)ids.size(0), t = (int)ids.size(1);
        var batch = new ForwardBatch
        {
            InputIds = ids.to(model.Device),
            Positions = torch.arange(t, ScalarType.Int64, model.Device).unsqueeze(0).expand(b, t).contiguous(),
            RealTokens = Enumerable.Repeat(t, b).ToArray(),
            MaxPosition = t - 1,
        };
        var recorder = new Recorder(model.Info.Layers, mlp);
        var previous = model.Sparsity;
        using var cache = model.CreateCache(b, t, maxStepTokens: t);
        try
        {
            model.Sparsity = recorder;
            var logits = model.Forward(batch, cache).DetachFromDisposeScope();
            return new CapturedPass(recorder.Layers(), logits);
        }
        catch
        {
            recorder.Dispose();
            throw;
        }
        finally
        {
            model.Sparsity = previous;
        }
    }

    /// <summary>A dense step that keeps what the layers hand to the seam — their inputs, head outputs and pre-activations —
    /// past each layer's dispose scope, and selects nothing.</summary>
    sealed class Recorder(int layers, bool mlp) : IContextualSparsity, ISparsityStep, IDisposable
    {
        readonly Tensor?[] inputs = new Tensor?[layers], heads = new Tensor?[layers], firing = new Tensor?[layers], mlpInputs = new Tensor?[layers];

        public ISparsityStep ForStep(ForwardBatch batch) => this;

        // The model frees each layer's input after the layer: an alias keeps the storage.
        public void LayerInput(int layer, Tensor hidden) => inputs[layer] = hidden.alias().DetachFromDisposeScope();

        public Tensor? Heads(int layer, Func<Tensor> headOutputs)
        {
            heads[layer] = headOutputs().to(ScalarType.Float32, copy: true).DetachFromDisposeScope();
            return null;
        }

        public Tensor? Neurons(int layer, Tensor mlpInput, Func<Tensor> preActivations)
        {
            if (!mlp) return null;
            firing[layer] = preActivations().gt(0).DetachFromDisposeScope(); // label: relu(·) > 0
            mlpInputs[layer] = mlpInput.alias().DetachFromDisposeScope();
            return null;
        }

        public IReadOnlyList<LayerCapture> Layers() => Enumerable.Range(0, layers).Select(i => new LayerCapture(
            inputs[i] ?? throw new InvalidOperationException($"layer {i} handed no input to the seam."),
            heads[i] ?? throw new InvalidOperationException($"layer {i} handed no head outputs to the seam."), firing[i], mlpInputs[i])).ToArray();

        public void Dispose()
        {
            foreach (var x in inputs.Concat(heads).Concat(firing).Concat(mlpInputs)) x?.Dispose();
        }
    }

    /// <summary>The first <paramref name="keep"/> rows of [B,T,…] flattened to [B·T,…].</summary>
    static Tensor Rows(Tensor x, int keep) => x.flatten(0, 1).narrow(0, 0, keep);

    static Tensor Cat(List<Tensor> parts) => parts.Count == 1 ? parts[0].alias() : torch.cat(parts, 0);
}
