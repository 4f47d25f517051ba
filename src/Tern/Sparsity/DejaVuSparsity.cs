using Tern.Interop;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Sparsity;

/// <summary>How <see cref="DejaVuSparsity"/> picks the neurons and heads a layer computes.</summary>
public enum SelectionRule
{
    /// <summary>The top-k of the layer's learned predictor (DejaVu §4.2; with lookahead it read the previous layer's input).</summary>
    Predicted,
    /// <summary>The top-k of the true scores — neurons by pre-activation, heads by output norm ‖o_h‖: the bound a predictor can
    /// reach (it costs the dense products).</summary>
    Oracle,
    /// <summary>k units drawn at random: the floor.</summary>
    Random,
}

/// <summary>Contextual MLP and attention-head sparsity of a model's decode steps.</summary>
public sealed record SparsityOptions
{
    /// <summary>Fraction of each layer's MLP neurons computed (DejaVu's kernel study: 0.05–0.2); 1 runs the MLP dense.</summary>
    public double MlpActive { get; init; } = 1.0;

    /// <summary>Fraction of each layer's attention heads projected (DejaVu: 0.25–0.5 on OPT-175B); 1 runs attention dense.</summary>
    public double HeadsActive { get; init; } = 1.0;

    /// <summary>The selection rule, for neurons and heads alike.</summary>
    public SelectionRule Rule { get; init; } = SelectionRule.Predicted;

    /// <summary>Seed of <see cref="SelectionRule.Random"/>.</summary>
    public long Seed { get; init; }

    /// <summary>Also steps of several tokens (a prefill, a perplexity window), each token choosing its own units: how
    /// DejaVu measures quality. Off: those steps run dense and generation sparsifies its decode steps only.</summary>
    public bool EveryToken { get; init; }

    /// <summary>On CUDA, lookahead predictors (and their top-k) run on a second stream while the layer before computes (DejaVu's
    /// asynchronous lookahead, as its latency system runs them); off, they run in the step's order. Choices and results are the same either way.</summary>
    public bool OverlapPredictors { get; init; } = true;

    /// <summary>Checks the values, with messages that name the option.</summary>
    public void Validate()
    {
        if (!(MlpActive > 0 && MlpActive <= 1)) throw new OptionException($"{TernOption.SparsityMlp} must be in (0, 1], the fraction of neurons computed (got {MlpActive}).");
        if (!(HeadsActive > 0 && HeadsActive <= 1)) throw new OptionException($"{TernOption.SparsityHeads} must be in (0, 1], the fraction of heads computed (got {HeadsActive}).");
    }

    const string Syntax = "mlp=FRACTION,heads=FRACTION[,rule=predicted|oracle|random][,seed=N][,overlap=true|false]";

    /// <summary>Reads <c>mlp=F,heads=F[,rule=predicted|oracle|random][,seed=N][,overlap=true|false]</c>, either fraction optional (the CLI's
    /// <c>--sparsity</c>, a request's field).</summary>
    public static SparsityOptions Parse(string spec)
    {
        var options = new SparsityOptions();
        bool fraction = false;
        foreach (string item in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var (key, value) = item.Split('=', 2) is [var k, var v] ? (k.Trim().ToLowerInvariant(), v.Trim()) : (item.ToLowerInvariant(), "");
            var invariant = System.Globalization.CultureInfo.InvariantCulture;
            bool number = double.TryParse(value, System.Globalization.NumberStyles.Float, invariant, out double f);
            options = key switch
            {
                "mlp" when number => options with { MlpActive = f },
                "heads" when number => options with { HeadsActive = f },
                "rule" when Enum.TryParse<SelectionRule>(value, ignoreCase: true, out var rule) && !int.TryParse(value, out _) => options with { Rule = rule },
                "seed" when long.TryParse(value, invariant, out long seed) => options with { Seed = seed },
                "overlap" when bool.TryParse(value, out bool overlap) => options with { OverlapPredictors = overlap },
                _ => throw new OptionException($"{TernOption.Sparsity}: '{item}' is not understood; write {Syntax}, e.g. mlp=0.1,heads=0.5."),
            };
            fraction |= key is "mlp" or "heads";
        }
        if (!fraction) throw new OptionException($"{TernOption.Sparsity} '{spec}' names no fraction: write e.g. mlp=0.1 or heads=0.5 (the fractions of MLP neurons and attention heads computed).");
        options.Validate();
        return options;
    }
}

/// <summary>
/// DejaVu's contextual sparsity (Liu et al. 2023, §4): in each decode step, layer ℓ computes only the k = ⌈MlpActive·I⌉ MLP
/// neurons and projects only the k = ⌈HeadsActive·H⌉ attention heads its rule selects per token — the top-k of the learned
/// predictors' logits (read from layer ℓ−1's input with lookahead, so the selection is ready before the layer runs), of the
/// true scores (oracle), or at random. A ReLU neuron outside the selection contributes relu(·) = 0 only if it was silent
/// anyway; a skipped head's output counts as zero (its keys and values are still cached; when the rule chooses before attention
/// — predictors, random — decode steps compute only the kept heads' queries and attention). Each token chooses its own units;
/// prefill steps run dense unless <see cref="SparsityOptions.EveryToken"/>. Set on a model through
/// <see cref="CausalLanguageModel.Sparsity"/>.
/// </summary>
public sealed class DejaVuSparsity : IContextualSparsity, IDisposable
{
    readonly SparsityOptions options;
    readonly SparsityPredictors? predictors;
    readonly int neurons, heads, layers;
    readonly torch.Generator? random;
    SparsityPredictors? owned;

    DejaVuSparsity(SparsityOptions options, SparsityPredictors? predictors, ModelIdentity model)
    {
        this.options = options;
        this.predictors = predictors;
        (neurons, heads, layers) = (model.IntermediateSize, model.Heads, model.Layers);
        ActiveNeurons = (int)Math.Ceiling(options.MlpActive * neurons);
        ActiveHeads = (int)Math.Ceiling(options.HeadsActive * heads);
        if (options.Rule == SelectionRule.Random) random = new torch.Generator((ulong)options.Seed);
    }

    /// <summary>Sparsity for <paramref name="model"/>; <paramref name="predictors"/> (trained for it) are needed by
    /// <see cref="SelectionRule.Predicted"/>. Refuses MLP sparsity where the MLP is not ReLU (its neurons are never exactly
    /// silent); head sparsity serves every architecture (Llama family, SwiGLU included; OPT; GPT-2; GPT-NeoX).</summary>
    public static DejaVuSparsity Create(CausalLanguageModel model, SparsityOptions options, SparsityPredictors? predictors = null)
    {
        var identity = Supported(model, options);
        if (options.Rule == SelectionRule.Predicted)
        {
            if (predictors is null) throw new OptionException($"{TernOption.Sparsity} with learned predictors needs them: train them with 'tern sparsity train'.");
            if (options.MlpActive < 1 && (!predictors.Manifest.Mlp || predictors.Layers.Any(l => l.Mlp is null)))
                throw new OptionException($"these predictors hold no MLP predictors (trained with --heads-only); train them again for MLP sparsity, or ask for heads= only.");
        }
        return new DejaVuSparsity(options, predictors, identity);
    }

    /// <summary>The model's identity, once the options are valid and the model's MLP can run them.</summary>
    static ModelIdentity Supported(CausalLanguageModel model, SparsityOptions options)
    {
        options.Validate();
        // Before anything reads the config as a Transformer's: recurrent layers (Hyena) have no neurons or heads to skip.
        if (model.HasRecurrentLayers)
            throw new OptionException($"{TernOption.Sparsity} skips MLP neurons and attention heads of decode steps, which this {model.Info.ModelType} model (recurrent layers) does not have; run it dense.");
        var identity = ModelIdentity.Of(model.Config);
        if (options.MlpActive < 1) identity.RequireReluMlp();
        return identity;
    }

    /// <summary>Sparsity for <paramref name="model"/>, loaded from <paramref name="modelDirectory"/>: the learned predictors
    /// saved next to the model (<c>sparsity/</c>, checked against it) when the rule needs them, moved to the model's device and
    /// owned by the result.</summary>
    public static DejaVuSparsity Load(CausalLanguageModel model, string modelDirectory, SparsityOptions options)
    {
        if (options.Rule != SelectionRule.Predicted) return Create(model, options);
        Supported(model, options); // before reading predictors for a model that cannot use them
        return Owning(model, options, Placed(SparsityPredictors.LoadFor(model, modelDirectory), model));
    }

    /// <summary><paramref name="predictors"/> (disposed) moved where <paramref name="model"/> runs: on CUDA in its type, as
    /// DejaVu's latency path runs them in fp16 — an fp32 copy would read twice the bytes each step, at OPT-30B's shape 84 MB per
    /// layer, as much as the 10%-sparse MLP itself; on the CPU in fp32 as trained.</summary>
    static SparsityPredictors Placed(SparsityPredictors predictors, CausalLanguageModel model)
    {
        if (model.Device.type == DeviceType.CPU) return predictors;
        using var source = predictors;
        return source.To(model.Device, model.Device.type == DeviceType.CUDA ? model.DType.ToScalarType() : null);
    }

    /// <summary>Sparsity whose learned rule runs untrained predictors of the default ranks (random weights, on the model's
    /// device): what a throughput measurement of a model with dummy weights needs — the predictors' cost, not their choices.</summary>
    public static DejaVuSparsity ForTiming(CausalLanguageModel model, SparsityOptions options, long seed = 0)
    {
        if (options.Rule != SelectionRule.Predicted) return Create(model, options);
        return Owning(model, options, Placed(SparsityPredictors.Untrained(Supported(model, options), torch.CPU, seed), model));
    }

    /// <summary>Sparsity for an offloaded model (set it as its <see cref="Offloading.OffloadedModel.Sparsity"/>), loaded as
    /// <see cref="Load(CausalLanguageModel, string, SparsityOptions)"/> does: the predictors on its compute device, in its type.</summary>
    public static DejaVuSparsity Load(Offloading.OffloadedModel model, string modelDirectory, SparsityOptions options) =>
        Load(model.Model, modelDirectory, options);

    /// <summary><see cref="ForTiming(CausalLanguageModel, SparsityOptions, long)"/> for an offloaded model.</summary>
    public static DejaVuSparsity ForTiming(Offloading.OffloadedModel model, SparsityOptions options, long seed = 0) =>
        ForTiming(model.Model, options, seed);

    static DejaVuSparsity Owning(CausalLanguageModel model, SparsityOptions options, SparsityPredictors predictors)
    {
        try
        {
            var sparsity = Create(model, options, predictors);
            sparsity.owned = predictors;
            return sparsity;
        }
        catch
        {
            predictors.Dispose();
            throw;
        }
    }

    /// <summary>The learned predictors the rule runs, where the model runs (null for the oracle and random rules).</summary>
    internal SparsityPredictors? Predictors => predictors;

    /// <summary>MLP neurons each layer computes per token.</summary>
    public int ActiveNeurons { get; }

    /// <summary>Attention heads each layer projects per token.</summary>
    public int ActiveHeads { get; }

    bool SparseMlp => ActiveNeurons < neurons;
    bool SparseHeads => ActiveHeads < heads;

    /// <summary>MLP neurons of each layer (what <see cref="ActiveNeurons"/> is a part of).</summary>
    public int Neurons => neurons;

    /// <summary>Attention heads of each layer (what <see cref="ActiveHeads"/> is a part of).</summary>
    public int Heads => heads;

    /// <inheritdoc />
    public bool SkipsNeurons => SparseMlp;

    // Where lookahead predictors run beside the step (created at the first CUDA step that asks; null: in order).
    SideStream? side;
    bool sideAsked;

    /// <summary>True once a step has forked its lookahead predictors onto a side stream.</summary>
    internal bool OverlapsPredictors => side is not null;

    SideStream? SideStreamFor(Device device)
    {
        if (!options.OverlapPredictors || device.type != DeviceType.CUDA) return null;
        if (!sideAsked) (side, sideAsked) = (SideStream.For(device), true);
        return side;
    }

    /// <summary>Releases what <c>Load</c> (either overload) loaded.</summary>
    public void Dispose()
    {
        side?.Dispose();
        side = null;
        owned?.Dispose();
        owned = null;
        random?.Dispose();
    }

    /// <inheritdoc />
    public ISparsityStep? ForStep(ForwardBatch batch) =>
        (batch.InputIds.size(1) != 1 && !options.EveryToken) || !(SparseMlp || SparseHeads) ? null // k = all: dense
            : new Step(this, batch.InputIds.size(0), batch.InputIds.size(1));

    /// <summary>The indices of the <paramref name="k"/> largest scores of each row, int64 [.., k] ascending (the gather kernels
    /// read rows in order): one selection kernel on CUDA for 16-bit scores, else topk + sort — topk unsorted: sorting its k
    /// values by score first (its default) was a second sort that the sort by index makes moot.</summary>
    internal static Tensor TopKAscending(Tensor scores, int k) => FusedKernels.TryTopKAscending(scores, k, out var kept) ? kept
        : scores.topk(k, dim: -1, sorted: false).indexes.sort(dim: -1).Values;

    sealed class Step(DejaVuSparsity owner, long rows, long tokens) : ISparsityStep
    {
        // Predicted layers' selections [B, T, k] (top-k of the predictors' logits), owned by the step (out of every dispose
        // scope) until EndStep.
        readonly Tensor?[] neuronChoices = new Tensor?[owner.layers], headChoices = new Tensor?[owner.layers];
        Device device = torch.CPU;
        // Lookahead predictors forked onto the side stream at layer ℓ's input, joined at layer ℓ + 1's, with the inputs they
        // read (kept allocated until then).
        readonly List<(SideStream.Fork Fork, Tensor Input)> ahead = new();

        bool Predicted => owner.options.Rule == SelectionRule.Predicted;
        bool MlpReadsMlpInput => owner.predictors!.Manifest.MlpReadsMlpInput;

        public void LayerInput(int layer, Tensor hidden)
        {
            device = hidden.device;
            JoinAhead();
            if (Predicted) Predict(layer, hidden, mlp: owner.SparseMlp && !MlpReadsMlpInput, heads: owner.SparseHeads);
        }

        public Tensor? Heads(int layer, Func<Tensor> headOutputs) => owner.SparseHeads
            ? Select(layer, headChoices, () => headOutputs().to(ScalarType.Float32).norm(-1), owner.heads, owner.ActiveHeads) : null;

        // Predictors (read before the layer) and random draws choose without the head outputs; the oracle needs them.
        public Tensor? HeadsAhead(int layer) => owner.SparseHeads && owner.options.Rule != SelectionRule.Oracle
            ? Select(layer, headChoices, () => throw new InvalidOperationException("the oracle ranks heads by their outputs"), owner.heads, owner.ActiveHeads) : null;

        public Tensor? Neurons(int layer, Tensor mlpInput, Func<Tensor> preActivations)
        {
            if (!owner.SparseMlp) return null;
            if (Predicted && MlpReadsMlpInput) Predict(layer, mlpInput, mlp: true, heads: false);
            return Select(layer, neuronChoices, preActivations, owner.neurons, owner.ActiveNeurons);
        }

        /// <summary>Runs the predictors whose source is layer <paramref name="layer"/>'s <paramref name="input"/> and keeps their
        /// top-k: ℓ + 1's with lookahead (and ℓ's own for layer 0), else ℓ's. Lookahead's ℓ + 1 runs on the side stream when there
        /// is one (DejaVu's asynchronous lookahead: the next layer's prediction overlaps this layer's work), the rest in order.</summary>
        void Predict(int layer, Tensor input, bool mlp, bool heads)
        {
            foreach (int target in new[] { layer, layer + 1 })
            {
                if (target >= owner.layers || PredictorTrainer.SourceLayer(target, owner.predictors!.Manifest.Lookahead) != layer) continue;
                var fork = target > layer ? owner.SideStreamFor(device)?.Begin() : null;
                if (fork is not null) ahead.Add((fork, input.alias().DetachFromDisposeScope()));
                try
                {
                    using var scope = torch.NewDisposeScope();
                    var predictor = owner.predictors.Layers[target];
                    if (mlp) neuronChoices[target] ??= TopKAscending(predictor.Mlp!.Logits(input), owner.ActiveNeurons).DetachFromDisposeScope();
                    if (heads) headChoices[target] ??= TopKAscending(predictor.Heads.Logits(input), owner.ActiveHeads).DetachFromDisposeScope();
                }
                finally
                {
                    fork?.End();
                }
            }
        }

        void JoinAhead()
        {
            foreach (var (fork, input) in ahead)
            {
                fork.Join();
                input.Dispose();
            }
            ahead.Clear();
        }

        public void EndStep()
        {
            JoinAhead();
            Release(neuronChoices);
            Release(headChoices);
        }

        static void Release(Tensor?[] choices)
        {
            for (int i = 0; i < choices.Length; i++)
            {
                choices[i]?.Dispose();
                choices[i] = null;
            }
        }

        /// <summary>The top-<paramref name="k"/> of <paramref name="units"/> by the rule's scores, int64 [B, T, k] ascending.</summary>
        Tensor Select(int layer, Tensor?[] predicted, Func<Tensor> truth, int units, int k) => owner.options.Rule switch
        {
            SelectionRule.Predicted => (predicted[layer] ?? throw new InvalidOperationException($"layer {layer}'s predictor has not run: layer inputs come in order.")).alias(),
            SelectionRule.Oracle => TopKAscending(truth(), k).to(device),
            _ => TopKAscending(torch.rand(new long[] { rows, tokens, units }, generator: owner.random), k).to(device),
        };
    }
}
