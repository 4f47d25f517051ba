using System.Text.Json.Serialization;
using Tern.Checkpoints;

namespace Tern.Sparsity;

/// <summary>A problem with sparsity data or predictors: another model's files, or a model whose MLP has no exact zeros.</summary>
public sealed class SparsityException(string message) : InvalidOperationException(message);

/// <summary>
/// The config fields that fix the shapes of activation data and predictors, named as in config.json. Collected data and
/// trained predictors carry the identity of the model they came from; using them with another model is refused by field.
/// </summary>
public sealed record ModelIdentity
{
    /// <summary>config.json's <c>model_type</c>.</summary>
    [JsonPropertyName("model_type")] public required string ModelType { get; init; }
    /// <summary>Width of the residual stream (the predictors' input).</summary>
    [JsonPropertyName("hidden_size")] public required int HiddenSize { get; init; }
    /// <summary>Decoder layers (one predictor pair each).</summary>
    [JsonPropertyName("num_hidden_layers")] public required int Layers { get; init; }
    /// <summary>MLP neurons per layer (<c>intermediate_size</c>, OPT's <c>ffn_dim</c>).</summary>
    [JsonPropertyName("intermediate_size")] public required int IntermediateSize { get; init; }
    /// <summary>Query heads per layer.</summary>
    [JsonPropertyName("num_attention_heads")] public required int Heads { get; init; }
    /// <summary>The MLP activation (<c>hidden_act</c> / <c>activation_function</c>).</summary>
    [JsonPropertyName("activation")] public required string Activation { get; init; }

    /// <summary>The identity of the model <paramref name="config"/> describes (the defaults transformers applies when a field is absent).</summary>
    public static ModelIdentity Of(HfConfig config)
    {
        string type = config.ModelType;
        int hidden = config.GetInt("hidden_size") ?? config.RequireInt("n_embd");
        return new ModelIdentity
        {
            ModelType = type,
            HiddenSize = hidden,
            Layers = config.GetInt("num_hidden_layers") ?? config.RequireInt("n_layer"),
            Heads = config.GetInt("num_attention_heads") ?? config.RequireInt("n_head"),
            IntermediateSize = config.GetInt("intermediate_size") ?? config.GetInt("ffn_dim") ?? config.GetInt("n_inner") ?? 4 * hidden,
            Activation = (config.GetString("hidden_act") ?? config.GetString("activation_function")
                ?? (type is "opt" ? "relu" : type is "gpt2" ? "gelu_new" : "silu")).ToLowerInvariant(),
        };
    }

    /// <summary>True when MLP neurons are exactly zero when inactive: a ReLU MLP (OPT's fc1, or a Llama-family gated MLP with
    /// <c>hidden_act</c> relu, whose neuron is off when relu(gate·x) is zero).</summary>
    [JsonIgnore] public bool HasReluMlp => Activation == "relu" && ModelType is "opt" or "llama" or "mistral" or "qwen2";

    const string HeadsOnly = "--heads-only to collect and train, heads= without mlp= to run";

    /// <summary>Throws unless <see cref="HasReluMlp"/>: SwiGLU/GELU neurons are never exactly off, so "fires" has no meaning.</summary>
    public void RequireReluMlp()
    {
        if (HasReluMlp) return;
        throw new SparsityException(Activation == "relu"
            ? $"MLP neuron sparsity is implemented for OPT and Llama-family MLPs; this model is '{ModelType}'. Use attention-head sparsity only ({HeadsOnly})."
            : $"MLP neuron sparsity needs a ReLU MLP, whose inactive neurons are exactly zero; this {ModelType} model's activation is '{Activation}' " +
              $"(SwiGLU/GELU neurons are never exactly off). Use attention-head sparsity only ({HeadsOnly}).");
    }

    /// <summary>Throws naming the first field where <paramref name="actual"/> differs from this identity (what <paramref name="what"/>
    /// at <paramref name="path"/> was made for), and the fix.</summary>
    public void RequireSame(ModelIdentity actual, string path, string what, string fix)
    {
        foreach (var (field, mine, theirs) in new (string, object, object)[]
        {
            ("model_type", ModelType, actual.ModelType), ("hidden_size", HiddenSize, actual.HiddenSize),
            ("num_hidden_layers", Layers, actual.Layers), ("intermediate_size", IntermediateSize, actual.IntermediateSize),
            ("num_attention_heads", Heads, actual.Heads), ("activation", Activation, actual.Activation),
        })
            if (!mine.Equals(theirs))
                throw new SparsityException($"{path}: {what} made for a model with {field} {mine}, but this model has {field} {theirs}; {fix}.");
    }
}
