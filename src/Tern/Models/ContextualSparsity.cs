using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// DejaVu's seam (Liu et al. 2023, contextual sparsity): which MLP neurons each decoder layer computes in a step. The layers
/// ask through <see cref="ISparsityStep"/> and know no selection rule; <c>Tern.Sparsity</c> holds the rules (learned
/// predictors, the oracle, random) and the sparse products. Set on a model with <see cref="CausalLanguageModel.Sparsity"/>.
/// </summary>
public interface IContextualSparsity
{
    /// <summary>The selector of one forward step, or null to run the step dense (DejaVu sparsifies generation steps; a prefill
    /// may run dense). It may carry state from layer to layer: a lookahead predictor reads layer ℓ's input for ℓ + 1.</summary>
    ISparsityStep? ForStep(ForwardBatch batch);
}

/// <summary>One step's selections, asked layer by layer in order.</summary>
public interface ISparsityStep
{
    /// <summary>Layer <paramref name="layer"/>'s input [B, T, hidden], before the layer runs (what lookahead predictors read).</summary>
    void LayerInput(int layer, Tensor hidden);

    /// <summary>The MLP neurons layer <paramref name="layer"/> computes for each token: int64 [B, T, k], or null for all of them.
    /// <paramref name="preActivations"/> gives the true pre-activations [B, T, intermediate] (the oracle's rule; it costs the
    /// dense product, so other rules do not call it).</summary>
    Tensor? Neurons(int layer, Func<Tensor> preActivations);
}
