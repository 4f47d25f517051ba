using Tern.Caching;
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

/// <summary>One layer of one forward pass, as <see cref="ActivationCollector.Capture"/> sees it (tensors in the caller's scope).</summary>
/// <param name="Input">The residual stream entering the layer, [B,T,hidden], model dtype.</param>
/// <param name="HeadOutputs">Each head's attention output before the output projection, [B,H,T,D] fp32.</param>
/// <param name="MlpActive">Bool [B,T,intermediate], or null without MLP collection.</param>
internal sealed record LayerCapture(Tensor Input, Tensor HeadOutputs, Tensor? MlpActive);

/// <summary>
/// DejaVu's data collection (Liu et al. 2023, §4 and the released scripts): run the dense model over a corpus and record, per
/// layer, its input (the residual stream before the norm: what the predictors read), which MLP neurons fire (label:
/// post-ReLU &gt; 0) and each head's output norm (label: the top heads by ‖o_h‖). The model runs part by part, so every layer's
/// input is seen; head outputs come from the attention probabilities (<see cref="HeadOutputProbe"/>), the MLP mask from the
/// layer's own weights (<see cref="MlpNeurons"/>).
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
        var mlp = options.Mlp ? MlpNeurons.For(model) : null;
        int t = Math.Min(options.SequenceLength, model.Info.MaxPositions);
        int windows = Math.Min(tokens.Count / t, (options.MaxTokens + t - 1) / t);
        if (windows == 0)
            throw new ArgumentException($"the corpus has {tokens.Count} tokens, fewer than one window of {t}; give more text or a smaller sequence length.");
        int wanted = Math.Min(options.MaxTokens, windows * t);
        int layers = model.Info.Layers;
        var inputs = new List<Tensor>[layers];
        var active = new List<Tensor>[layers];
        var norms = new List<Tensor>[layers];
        for (int i = 0; i < layers; i++) (inputs[i], active[i], norms[i]) = (new(), new(), new());
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
                var captures = Capture(model, ids, mlp).Layers;
                for (int i = 0; i < layers; i++)
                {
                    var c = captures[i];
                    inputs[i].Add(Rows(c.Input, keep).to(ScalarType.BFloat16, torch.CPU).DetachFromDisposeScope());
                    // ‖o_h‖ per token and head: [B,H,T,D] → [B·T, H].
                    norms[i].Add(Rows(c.HeadOutputs.norm(-1).transpose(1, 2), keep).cpu().DetachFromDisposeScope());
                    if (c.MlpActive is { } a) active[i].Add(Rows(a, keep).cpu().DetachFromDisposeScope());
                }
                kept += keep;
                progress?.Report((double)kept / wanted);
            }
            var data = new LayerActivations[layers];
            for (int i = 0; i < layers; i++)
                data[i] = new LayerActivations(Cat(inputs[i]), mlp is null ? null : Cat(active[i]), Cat(norms[i]));
            return new ActivationData(new ActivationManifest { Model = identity, Tokens = kept, SequenceLength = t, Mlp = mlp is not null }, data);
        }
        finally
        {
            foreach (var list in inputs.Concat(active).Concat(norms))
                foreach (var x in list) x.Dispose();
        }
    }

    /// <summary>
    /// One dense forward pass over <paramref name="ids"/> [B,T] (positions 0..T-1), part by part through a full cache that observes
    /// attention: every layer's input, head outputs and (with <paramref name="mlp"/>) MLP firing mask, plus the last layer's
    /// output. Tensors belong to the caller's dispose scope.
    /// </summary>
    internal static (IReadOnlyList<LayerCapture> Layers, Tensor Output) Capture(CausalLanguageModel model, Tensor ids, MlpNeurons? mlp)
    {
        using var noGrad = torch.no_grad();
        int b = (int)ids.shape[0], t = (int)ids.shape[1];
        var batch = new ForwardBatch
        {
            InputIds = ids.to(model.Device),
            Positions = torch.arange(t, ScalarType.Int64, model.Device).unsqueeze(0).expand(b, t).contiguous(),
            RealTokens = Enumerable.Repeat(t, b).ToArray(),
            MaxPosition = t - 1,
        };
        var probe = new HeadOutputProbe(model.Info.Layers);
        using var cache = model.CreateCache(b, t, new KvCacheConfig(probe), maxStepTokens: t);
        var h = model.RunStage(0, model.Parts[0], null, batch, null);
        var captures = new LayerCapture[model.Info.Layers];
        for (int i = 0; i < captures.Length; i++)
        {
            var x = h;
            var weights = model.Parts[i + 1];
            h = model.RunStage(i + 1, weights, x, batch, cache[i]);
            var heads = probe.Take(i);
            Tensor? fires = null;
            if (mlp is not null)
            {
                // [B,H,T,D] → [B,T,H·D], the layout the output projection reads.
                var concatenated = heads.transpose(1, 2).reshape(b, t, -1).to(x.dtype);
                fires = mlp.Active(weights, x, concatenated);
            }
            captures[i] = new LayerCapture(x, heads, fires);
        }
        return (captures, h);
    }

    /// <summary>The first <paramref name="keep"/> rows of [B,T,…] flattened to [B·T,…].</summary>
    static Tensor Rows(Tensor x, int keep) => x.flatten(0, 1).narrow(0, 0, keep);

    static Tensor Cat(List<Tensor> parts) => parts.Count == 1 ? parts[0].alias() : torch.cat(parts, 0);
}
