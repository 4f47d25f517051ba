using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Sparsity;

/// <summary>How <see cref="MlpSparsity"/> picks the neurons a layer computes.</summary>
public enum NeuronRule
{
    /// <summary>The top-k of the layer's learned predictor (DejaVu §4.2; with lookahead it read the previous layer's input).</summary>
    Predicted,
    /// <summary>The top-k of the true pre-activations: the bound a predictor can reach (it costs the dense product).</summary>
    Oracle,
    /// <summary>k neurons drawn at random: the floor.</summary>
    Random,
}

/// <summary>Contextual MLP sparsity of a model's decode steps.</summary>
public sealed record SparsityOptions
{
    /// <summary>Fraction of each layer's neurons computed (DejaVu's kernel study: 0.05–0.2); 1 runs dense.</summary>
    public double MlpActive { get; init; } = 1.0;

    /// <summary>The selection rule.</summary>
    public NeuronRule Rule { get; init; } = NeuronRule.Predicted;

    /// <summary>Seed of <see cref="NeuronRule.Random"/>.</summary>
    public long Seed { get; init; }

    /// <summary>Also steps of several tokens (a prefill, a perplexity window), each token choosing its own neurons: how
    /// DejaVu measures quality. Off: those steps run dense and generation sparsifies its decode steps only.</summary>
    public bool EveryToken { get; init; }

    /// <summary>Checks the values, with messages that name the option.</summary>
    public void Validate()
    {
        if (!(MlpActive > 0 && MlpActive <= 1)) throw new OptionException($"{TernOption.SparsityMlp} must be in (0, 1], the fraction of neurons computed (got {MlpActive}).");
    }

    /// <summary>Reads <c>mlp=F[,rule=predicted|oracle|random][,seed=N]</c> (the CLI's <c>--sparsity</c>, a request's field).</summary>
    public static SparsityOptions Parse(string spec)
    {
        var options = new SparsityOptions();
        bool mlp = false;
        foreach (string item in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var (key, value) = item.Split('=', 2) is [var k, var v] ? (k.Trim().ToLowerInvariant(), v.Trim()) : (item.ToLowerInvariant(), "");
            var invariant = System.Globalization.CultureInfo.InvariantCulture;
            options = key switch
            {
                "mlp" when double.TryParse(value, System.Globalization.NumberStyles.Float, invariant, out double f) => options with { MlpActive = f },
                "rule" when Enum.TryParse<NeuronRule>(value, ignoreCase: true, out var rule) && !int.TryParse(value, out _) => options with { Rule = rule },
                "seed" when long.TryParse(value, invariant, out long seed) => options with { Seed = seed },
                "heads" => throw new OptionException($"{TernOption.Sparsity}: head sparsity (heads=) is not built yet; only mlp= is (DejaVu's MLP sparsity)."),
                _ => throw new OptionException($"{TernOption.Sparsity}: '{item}' is not understood; write mlp=FRACTION[,rule=predicted|oracle|random][,seed=N], e.g. mlp=0.1."),
            };
            mlp |= key == "mlp";
        }
        if (!mlp) throw new OptionException($"{TernOption.Sparsity} '{spec}' names no fraction: write e.g. mlp=0.1 (the fraction of MLP neurons computed).");
        options.Validate();
        return options;
    }
}

/// <summary>
/// DejaVu's MLP sparsity (Liu et al. 2023, §4): in each decode step, layer ℓ computes only the k = ⌈MlpActive·I⌉ neurons its
/// rule selects per sequence — the top-k of the learned predictor's logits (read from layer ℓ−1's input with lookahead, so the
/// selection is ready before the layer runs), of the true pre-activations (oracle), or at random. A ReLU neuron outside the
/// selection contributes relu(·) = 0 only if it was silent anyway: the predictor's recall bounds the error. Each token chooses
/// its own neurons; prefill steps run dense unless <see cref="SparsityOptions.EveryToken"/>. Set on a model through
/// <see cref="CausalLanguageModel.Sparsity"/>.
/// </summary>
public sealed class MlpSparsity : IContextualSparsity, IDisposable
{
    readonly SparsityOptions options;
    readonly SparsityPredictors? predictors;
    readonly int neurons, active, layers;
    readonly torch.Generator? random;
    SparsityPredictors? owned;

    MlpSparsity(SparsityOptions options, SparsityPredictors? predictors, int neurons, int layers)
    {
        this.options = options;
        this.predictors = predictors;
        this.neurons = neurons;
        this.layers = layers;
        active = (int)Math.Ceiling(options.MlpActive * neurons);
        if (options.Rule == NeuronRule.Random) random = new torch.Generator((ulong)options.Seed);
    }

    /// <summary>MLP sparsity for <paramref name="model"/>; <paramref name="predictors"/> (trained for it) are needed by
    /// <see cref="NeuronRule.Predicted"/>. Refuses models whose MLP is not ReLU (their neurons are never exactly silent).</summary>
    public static MlpSparsity Create(CausalLanguageModel model, SparsityOptions options, SparsityPredictors? predictors = null)
    {
        options.Validate();
        RequireDenseSteps(model);
        var identity = ModelIdentity.Of(model.Config);
        identity.RequireReluMlp();
        if (options.Rule == NeuronRule.Predicted)
        {
            if (predictors is null) throw new OptionException($"{TernOption.SparsityMlp} with learned predictors needs them: train them with 'tern sparsity train'.");
            if (!predictors.Manifest.Mlp || predictors.Layers.Any(l => l.Mlp is null))
                throw new OptionException($"these predictors hold no MLP predictors (trained with --heads-only); train them again for MLP sparsity.");
        }
        return new MlpSparsity(options, predictors, identity.IntermediateSize, model.Info.Layers);
    }

    /// <summary>MLP sparsity for <paramref name="model"/>, loaded from <paramref name="modelDirectory"/>: the learned
    /// predictors saved next to the model (<c>sparsity/</c>, checked against it) when the rule needs them, moved to the
    /// model's device and owned by the result.</summary>
    public static MlpSparsity Load(CausalLanguageModel model, string modelDirectory, SparsityOptions options)
    {
        if (options.Rule != NeuronRule.Predicted) return Create(model, options);
        RequireDenseSteps(model);
        ModelIdentity.Of(model.Config).RequireReluMlp(); // before reading predictors for a model that cannot use them
        var predictors = SparsityPredictors.LoadFor(model, modelDirectory);
        if (model.Device.type != DeviceType.CPU)
        {
            using var onCpu = predictors;
            predictors = onCpu.To(model.Device);
        }
        return Owning(model, options, predictors);
    }

    /// <summary>MLP sparsity whose learned rule runs untrained predictors of the default ranks (random weights, on the model's
    /// device): what a throughput measurement of a model with dummy weights needs — the predictors' cost, not their choices.</summary>
    public static MlpSparsity ForTiming(CausalLanguageModel model, SparsityOptions options, long seed = 0)
    {
        if (options.Rule != NeuronRule.Predicted) return Create(model, options);
        RequireDenseSteps(model);
        var identity = ModelIdentity.Of(model.Config);
        identity.RequireReluMlp();
        return Owning(model, options, SparsityPredictors.Untrained(identity, model.Device, seed));
    }

    /// <summary>Refuses a model with recurrent layers (Hyena) before anything reads its config as a Transformer's.</summary>
    static void RequireDenseSteps(CausalLanguageModel model)
    {
        if (model.HasRecurrentLayers)
            throw new OptionException($"{TernOption.Sparsity} skips MLP neurons of decode steps, which this {model.Info.ModelType} model (recurrent layers) does not support; run it dense.");
    }

    static MlpSparsity Owning(CausalLanguageModel model, SparsityOptions options, SparsityPredictors predictors)
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

    /// <summary>Neurons each layer computes per sequence.</summary>
    public int ActiveNeurons => active;

    /// <summary>Releases what <see cref="Load"/> loaded.</summary>
    public void Dispose()
    {
        owned?.Dispose();
        owned = null;
        random?.Dispose();
    }

    /// <inheritdoc />
    public ISparsityStep? ForStep(ForwardBatch batch) =>
        (batch.InputIds.shape[1] != 1 && !options.EveryToken) || active >= neurons ? null // k = all: dense
            : new Step(this, batch.InputIds.shape[0], batch.InputIds.shape[1]);

    sealed class Step(MlpSparsity owner, long rows, long tokens) : ISparsityStep
    {
        readonly Tensor?[] logits = new Tensor?[owner.layers]; // predicted layers' logits [B, T, I], in the step's dispose scope
        Device device = torch.CPU;

        public void LayerInput(int layer, Tensor hidden)
        {
            device = hidden.device;
            if (owner.options.Rule != NeuronRule.Predicted) return;
            bool lookahead = owner.predictors!.Manifest.Lookahead;
            // Predictors whose source is this layer: ℓ + 1 with lookahead (and ℓ itself for layer 0), else ℓ.
            foreach (int target in new[] { layer, layer + 1 })
                if (target < owner.layers && PredictorTrainer.SourceLayer(target, lookahead) == layer && logits[target] is null)
                    logits[target] = owner.predictors.Layers[target].Mlp!.Logits(hidden);
        }

        public Tensor? Neurons(int layer, Func<Tensor> preActivations)
        {
            var scores = owner.options.Rule switch
            {
                NeuronRule.Predicted => logits[layer] ?? throw new InvalidOperationException($"layer {layer}'s predictor has not run: layer inputs come in order."),
                NeuronRule.Oracle => preActivations(),
                _ => torch.rand(new long[] { rows, tokens, owner.neurons }, generator: owner.random),
            };
            return scores.topk(owner.active, dim: -1).indexes.sort(dim: -1).Values.to(device); // ascending: rows read in order
        }
    }
}
