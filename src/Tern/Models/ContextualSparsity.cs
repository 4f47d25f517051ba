using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// DejaVu's seam (Liu et al. 2023, contextual sparsity): which MLP neurons and which attention heads each decoder layer
/// computes in a step. The layers ask through <see cref="ISparsityStep"/> and know no selection rule; <c>Tern.Sparsity</c>
/// holds the rules (learned predictors, the oracle, random) and the sparse products. Set on a model with
/// <see cref="CausalLanguageModel.Sparsity"/>.
/// </summary>
public interface IContextualSparsity
{
    /// <summary>The selector of one forward step, or null to run the step dense (DejaVu sparsifies generation steps; a prefill
    /// may run dense). It may carry state from layer to layer: a lookahead predictor reads layer ℓ's input for ℓ + 1.</summary>
    ISparsityStep? ForStep(ForwardBatch batch);

    /// <summary>True when steps may skip MLP neurons: on CUDA the model then keeps each MLP down-projection stored transposed,
    /// so that a selected neuron's output weights are one contiguous row for the gather-GEMV.</summary>
    bool SkipsNeurons => false;
}

/// <summary>One step's selections, asked layer by layer in order. What a layer hands out lives in the layer's dispose scope;
/// what the step keeps across layers it owns (outside every scope: an offloaded model runs each layer of a step in a scope of
/// its own, other batches' layers between) and releases in <see cref="EndStep"/>.</summary>
public interface ISparsityStep
{
    /// <summary>Layer <paramref name="layer"/>'s input [B, T, hidden], before the layer runs (what lookahead predictors read).</summary>
    void LayerInput(int layer, Tensor hidden);

    /// <summary>The query heads whose attention output layer <paramref name="layer"/> projects for each token: int64 [B, T, k]
    /// in ascending order, or null for all of them. <paramref name="headOutputs"/> gives every head's output before the output
    /// projection, [B, T, heads, head_dim] (the oracle ranks heads by its norm). Keys and values of every head are cached
    /// whatever is chosen, so a later token never reads a missing entry.</summary>
    Tensor? Heads(int layer, Func<Tensor> headOutputs);

    /// <summary>The query heads of layer <paramref name="layer"/>, as <see cref="Heads"/> gives them, when they are known before its
    /// attention runs (a predictor's lookahead, a random draw): the layer then computes only those heads' queries and attention
    /// (keys and values of every head still), and does not ask <see cref="Heads"/>. Null when the choice needs the head outputs
    /// (the oracle) or keeps every head.</summary>
    Tensor? HeadsAhead(int layer) => null;

    /// <summary>The MLP neurons layer <paramref name="layer"/> computes for each token: int64 [B, T, k], or null for all of them.
    /// <paramref name="mlpInput"/> is the residual stream entering the MLP block [B, T, hidden] (after attention, before the
    /// norm: what DejaVu's released MLP predictors read); <paramref name="preActivations"/> gives the true pre-activations
    /// [B, T, intermediate] (the oracle's rule; it costs the dense product, so other rules do not call it).</summary>
    Tensor? Neurons(int layer, Tensor mlpInput, Func<Tensor> preActivations);

    /// <summary>The step's last layer has run: release what the step kept from layer to layer (a lookahead predictor's choices
    /// for the next layer). Called once per step, whether the layers ran as one forward pass or stage by stage (offloading).</summary>
    void EndStep() { }
}
